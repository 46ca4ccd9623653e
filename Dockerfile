# Production image of Lethe Edge (CPU: native library; WebGPU through Mesa when no GPU is passed in).
# Models are not baked in: mount one and point LETHE_MODEL at it, e.g.
#   docker run -p 8080:8080 -v /path/to/models:/models -e LETHE_MODEL=/models/stories260K.gguf lethe-edge
FROM node:20-bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ mesa-vulkan-drivers ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
ENV PATH=/app/node_modules/.bin:$PATH

COPY deno.json deno.lock ./
COPY src ./src
COPY routes ./routes
COPY shaders ./shaders
COPY native ./native
ENV DENO_DIR=/app/.deno-cache
RUN deno install && deno task build:native && deno cache src/server/main.ts

RUN mkdir -p /data && chown -R node:node /app /data
ENV DENO_DIR=/app/.deno-cache HOST=0.0.0.0 PORT=8080 LETHE_STORE=denokv:/data/sessions.sqlite
VOLUME ["/data"]
EXPOSE 8080
USER node
CMD ["deno", "task", "start"]
