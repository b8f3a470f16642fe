-- Deny-heavy mix: every other request is the quickstart observer (tier 0, student)
-- asking for gpt-4o, which the default policy refuses (403); the rest are allowed.
-- BENCH_KEY: the allowed agent's key; BENCH_DENY_KEY: the observer's key.
local allow_key = os.getenv("BENCH_KEY") or "none"
local deny_key = os.getenv("BENCH_DENY_KEY") or "none"
local reqs = {}
local n = 0

local function chat(key, model)
  return wrk.format("POST", "/v1/chat/completions",
    {["Host"] = wrk.headers["Host"], ["Content-Type"] = "application/json",
     ["Authorization"] = "Bearer " .. key},
    '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello in five words."}],' ..
    '"max_tokens":64}')
end

function init(args)
  reqs[1] = chat(allow_key, "gpt-4o-mini")
  reqs[2] = chat(deny_key, "gpt-4o")
end

function request()
  n = n + 1
  return reqs[n % 2 + 1]
end
