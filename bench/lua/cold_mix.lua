-- Cache-cold mix: rotates through BENCH_AGENTS agents (keys pk-bench-cold-<i>, generated
-- by bench/fixtures.py) times the models in BENCH_MODELS, agent first, so consecutive
-- requests are distinct (agent, model) pairs and a pair repeats only after
-- agents x models requests: nearly every policy decision misses the cache.
-- BENCH_OFFSET: where in that sequence to start (repeated runs start further on).
local agents = tonumber(os.getenv("BENCH_AGENTS") or "1000")
local models = {}
for m in string.gmatch(os.getenv("BENCH_MODELS") or "gpt-4o-mini", "[^,]+") do
  models[#models + 1] = m
end
local n = tonumber(os.getenv("BENCH_OFFSET") or "0")

function request()
  local agent = n % agents
  local model = models[math.floor(n / agents) % #models + 1]
  n = n + 1
  return wrk.format("POST", "/v1/chat/completions",
    {["Host"] = wrk.headers["Host"], ["Content-Type"] = "application/json",
     ["Authorization"] = "Bearer pk-bench-cold-" .. agent},
    '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello in five words."}],' ..
    '"max_tokens":64}')
end
