/** Summary statistics of measured samples (latencies, TTFTs, rates), shared by the tools and the load driver. */

/** The p-quantile (0 ≤ p ≤ 1) with linear interpolation between order statistics; NaN for no samples. */
export function quantile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * p;
  const lo = Math.floor(pos);
  return s[lo] + (s[Math.ceil(pos)] - s[lo]) * (pos - lo);
}

export const mean = (xs: number[]): number => xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;

export interface TrendStats {
  count: number;
  avg: number;
  min: number;
  med: number;
  max: number;
  p90: number;
  p95: number;
  p99: number;
}

/** k6's trend summary of `values` (null for none). */
export function trendStats(values: number[]): TrendStats | null {
  if (values.length === 0) return null;
  return {
    count: values.length,
    avg: mean(values),
    min: Math.min(...values),
    med: quantile(values, 0.5),
    max: Math.max(...values),
    p90: quantile(values, 0.9),
    p95: quantile(values, 0.95),
    p99: quantile(values, 0.99),
  };
}
