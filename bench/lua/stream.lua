-- Streamed chat completion (the upstream sends 20 content chunks, a usage chunk and [DONE]).
-- include_usage is asked for, as the OpenAI SDK does for token accounting, so no proxy
-- needs to rewrite the body.
local key = os.getenv("BENCH_KEY") or "none"
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello in five words."}],' ..
           '"max_tokens":64,"stream":true,"stream_options":{"include_usage":true}}'
