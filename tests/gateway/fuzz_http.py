#!/usr/bin/env python3
"""Random-mutation HTTP fuzzer for tiergate's JSON endpoints (run by test_gateway_fuzz).

  fuzz_http.py SEED PORT N [AUTH_HEADER_VALUE]

Sends N requests built by mutating a valid body (wrong types, missing fields, huge numbers,
truncated JSON, NUL bytes) to random /v1 endpoints. Fails (exit 1) on a transport error, a
500, or a 4xx/5xx whose body is not {"error":{"message","type","param","code"}}. 502/503 from
the remote tier are allowed. Deterministic for a given SEED.
"""
import json, random, sys, http.client
random.seed(int(sys.argv[1]))
PORT=int(sys.argv[2])
paths=["/v1/chat/completions","/v1/completions","/v1/responses","/v1/embeddings","/v1/classify","/v1/extract","/v1/route/explain"]
vals=[None, True, False, 0, -1, 1, 2**63, 1e308, -0.5, "", "x", "auto", "gpt-fake", "phi-3.5-mini", [], {}, [1], ["a"], {"a":1}, "\u0000", "é"*10]
base={"model":"auto","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"text":"t","labels":["a","b"],
      "schema":{"type":"object","properties":{"a":{"type":"string"}}},"input":"x","prompt":"p","stream":False}
keys=list(base.keys())+["temperature","top_p","seed","stop","stream_options","multi_label","instructions","encoding_format","n","tools","response_format"]
def mutate(v, depth=0):
    r=random.random()
    if r<0.3 or depth>3: return random.choice(vals)
    if isinstance(v, dict):
        d=dict(v)
        for _ in range(random.randint(1,3)):
            k=random.choice(keys+list(d.keys()) if d else keys)
            if random.random()<0.2: d.pop(k,None)
            else: d[k]=mutate(d.get(k), depth+1)
        return d
    if isinstance(v, list):
        l=list(v)
        if l and random.random()<0.5: l[random.randrange(len(l))]=mutate(l[0],depth+1)
        else: l.append(mutate(None,depth+1))
        return l
    return random.choice(vals)
bad=0
for i in range(int(sys.argv[3])):
    body=mutate(base)
    if isinstance(body, dict): body["max_tokens"]=2 if not isinstance(body.get("max_tokens"), (int,)) or random.random()<0.8 else body["max_tokens"]
    data=json.dumps(body).encode() if random.random()<0.95 else json.dumps(body).encode()[:random.randint(0,50)]
    c=http.client.HTTPConnection("127.0.0.1",PORT,timeout=60)
    try:
        h={"Content-Type":"application/json"}
        if len(sys.argv)>4: h["Authorization"]=sys.argv[4]
        c.request("POST", random.choice(paths), data, h)
        r=c.getresponse(); b=r.read()
        if r.status>=500 and r.status not in (502,503): print("5xx", r.status, data[:200], b[:200]); bad+=1
        if r.status>=400:
            j=json.loads(b); assert set(j["error"].keys())>={"message","type","param","code"}, b
    except Exception as e:
        print("EXC", repr(e), data[:300]); bad+=1
    finally: c.close()
print("done bad=",bad)
sys.exit(1 if bad else 0)
