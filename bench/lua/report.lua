-- Appended to every scenario script by bench/wrk.py: prints one machine-readable
-- line after the run (latencies in microseconds; status_errors = HTTP >= 400).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@@BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
