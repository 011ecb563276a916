// A recording reverse proxy for the n8n tests: listens on 127.0.0.1:<port>, forwards every request
// unchanged to <target> (a running tiergate), answers n8n with tiergate's reply, and appends the
// exact request n8n sent (method, path, header names and values in order, body) to <out.jsonl>.
// The recordings are what tests/ecosystem/test_n8n_replay.c replays against the real binary.
//
//   node record-proxy.mjs <port> <target-base-url> <out.jsonl>
import http from 'node:http';
import fs from 'node:fs';

const [port, target, out] = process.argv.slice(2);
if (!port || !target || !out) {
  console.error('usage: node record-proxy.mjs <port> <target-base-url> <out.jsonl>');
  process.exit(2);
}
const hop = new Set(['connection', 'keep-alive', 'transfer-encoding', 'host', 'content-length']);

http
  .createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const body = Buffer.concat(chunks);
      const headers = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2) headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
      fs.appendFileSync(out, JSON.stringify({ method: req.method, path: req.url, headers,
                                              body: body.toString('utf8') }) + '\n');
      const fwd = {};
      for (const [k, v] of headers) if (!hop.has(k.toLowerCase())) fwd[k] = v;
      try {
        const r = await fetch(target + req.url, {
          method: req.method, headers: fwd,
          body: req.method === 'GET' || req.method === 'HEAD' ? undefined : body,
        });
        const rh = {};
        r.headers.forEach((v, k) => { if (!hop.has(k) && k !== 'content-encoding') rh[k] = v; });
        res.writeHead(r.status, rh);
        if (r.body) for await (const c of r.body) res.write(c);
        res.end();
      } catch (e) {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: String(e), type: 'proxy_error' } }));
      }
    });
  })
  .listen(Number(port), '127.0.0.1', () => console.log(`record-proxy on ${port} -> ${target}`));
