-- Non-streamed chat completion; the same request for every call.
-- BENCH_KEY: bearer key (ignored by the bare proxy and the upstream); BENCH_MODEL: model name.
local key = os.getenv("BENCH_KEY") or "none"
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello in five words."}],' ..
           '"max_tokens":64}'
