// A TLS server speaking HTTP/2 (and HTTP/1.1) for the executor's HTTP/2 test. Answers
// POST .../chat/completions with a completion whose content names the protocol version and the
// number of client connections seen so far: "http/2.0 sessions=1".
// usage: node h2_server.mjs PORT KEY_PEM CERT_PEM
import http2 from 'node:http2';
import fs from 'node:fs';

const [, , port, key, cert] = process.argv;
const sessions = new Set();
const server = http2.createSecureServer(
  { key: fs.readFileSync(key), cert: fs.readFileSync(cert), allowHTTP1: true },
  (req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      sessions.add(req.stream ? req.stream.session : req.socket);
      let model = 'unknown';
      try { model = JSON.parse(body).model; } catch (e) { /* answered anyway */ }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({
        id: 'chatcmpl-h2', object: 'chat.completion', created: 1, model,
        choices: [{ index: 0, message: { role: 'assistant', content: `http/${req.httpVersion} sessions=${sessions.size}` },
                    finish_reason: 'stop' }],
        usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
      }));
    });
  });
server.listen(Number(port), '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => process.exit(0));
