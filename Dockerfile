# Lethe Edge, production image. Two stages:
#   build   — Node (for npm) + g++: installs Deno from npm (pinned in package.json) and the npm packages, builds
#             the native CPU library (portable -march, LETHE_CPU_ARCH), the playground page's script and Deno's
#             module cache;
#   runtime — Debian slim with only the OpenMP runtime: the Deno binary, the app, the page, the library and the
#             cache;
#             runs as an unprivileged user, Deno as PID 1 so SIGTERM reaches the server's graceful shutdown.
# Models are not baked in: mount a directory of models on /models and name the file with LETHE_MODEL, e.g.
#   docker build -t lethe-edge .
#   docker run -p 8080:8080 -v "$PWD/../shared/models:/models:ro" -e LETHE_MODEL=/models/stories260K.gguf lethe-edge
# (deploy/compose.yaml runs Redis and two instances behind one port; see the README's Deployment section.)

FROM node:22.12-bookworm-slim AS build
ARG LETHE_CPU_ARCH=x86-64-v3
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# npm ci brings Deno's binary in its platform package; runInstall puts the real binary in place.
RUN npm ci --no-audit --no-fund --loglevel=error \
 && ln -s "$(cd node_modules/deno && node -p 'require("./install_api.cjs").runInstall()')" /usr/local/bin/deno \
 && deno --version
ENV DENO_DIR=/app/.deno-cache
COPY deno.json deno.lock ./
COPY src ./src
COPY routes ./routes
COPY shaders ./shaders
COPY native ./native
COPY scripts/healthcheck.ts ./scripts/healthcheck.ts
COPY playground ./playground
RUN deno install --frozen \
 && LETHE_CPU_ARCH="$LETHE_CPU_ARCH" deno task build:native --cpu-only \
 && deno task build:playground \
 && deno cache src/server/main.ts scripts/healthcheck.ts \
 && cp "$(readlink -f /usr/local/bin/deno)" /app/deno

FROM debian:bookworm-20241202-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 lethe \
 && useradd --system --uid 10001 --gid lethe --home-dir /app --no-create-home --shell /usr/sbin/nologin lethe \
 && mkdir -p /data /models \
 && chown lethe:lethe /data
COPY --from=build /app/deno /usr/local/bin/deno
WORKDIR /app
COPY --from=build --chown=lethe:lethe /app/deno.json /app/deno.lock ./
COPY --from=build --chown=lethe:lethe /app/node_modules ./node_modules
COPY --from=build --chown=lethe:lethe /app/src ./src
COPY --from=build --chown=lethe:lethe /app/routes ./routes
COPY --from=build --chown=lethe:lethe /app/shaders ./shaders
COPY --from=build --chown=lethe:lethe /app/scripts ./scripts
COPY --from=build --chown=lethe:lethe /app/native/build/liblethe_cpu.so ./native/build/liblethe_cpu.so
COPY --from=build --chown=lethe:lethe /app/playground/index.html /app/playground/style.css /app/playground/favicon.svg ./playground/
COPY --from=build --chown=lethe:lethe /app/playground/dist/app.js ./playground/dist/app.js
COPY --from=build --chown=lethe:lethe /app/.deno-cache ./.deno-cache
ENV DENO_DIR=/app/.deno-cache \
    DENO_NO_UPDATE_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    LETHE_MODEL=/models/model.gguf \
    LETHE_STORE=denokv:/data/sessions.sqlite \
    LETHE_BACKEND=native \
    LETHE_SHUTDOWN_DEADLINE_MS=10000
VOLUME ["/models", "/data"]
EXPOSE 8080
USER lethe
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["deno", "run", "--cached-only", "--allow-net=127.0.0.1", "--allow-env=PORT", "scripts/healthcheck.ts"]
STOPSIGNAL SIGTERM
CMD ["deno", "run", "--cached-only", "-A", "src/server/main.ts"]
