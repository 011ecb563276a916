-- wrk script: POST the benchmark chat request (set BODY_FILE to override the body).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local f = os.getenv("BODY_FILE")
if f then
  local h = io.open(f, "rb"); wrk.body = h:read("*a"); h:close()
else
  wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
end
local extra = os.getenv("EXTRA_HEADERS") -- "k1: v1|k2: v2"
if extra then
  for kv in string.gmatch(extra, "[^|]+") do
    local k, v = string.match(kv, "^%s*([^:]+):%s*(.*)$")
    if k then wrk.headers[k] = v end
  end
end
