// tiergate against the official openai@6 npm client: chat (stream and not, with usage), models,
// responses (stream and not), embeddings (the SDK's default base64), error classes, and a single
// attempt when the gateway says x-should-retry: false.
//
//   TIERGATE_BASE_URL=http://127.0.0.1:8080/v1 TIERGATE_API_KEY=... node conformance.mjs
//
// Exits 0 when every check passed; prints one line per check.
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.TIERGATE_BASE_URL;
const apiKey = process.env.TIERGATE_API_KEY ?? 'none';
const localModel = process.env.TIERGATE_LOCAL_MODEL ?? 'phi-3.5-mini';
const remoteModel = process.env.TIERGATE_REMOTE_MODEL ?? 'gpt-fake';
const deadModel = process.env.TIERGATE_DEAD_MODEL ?? 'gpt-dead';
assert.ok(baseURL, 'TIERGATE_BASE_URL is required');

let calls = 0;
const countingFetch = (url, init) => {
  calls++;
  return fetch(url, init);
};
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120000 });

const checks = [];
const check = (name, fn) => checks.push({ name, fn });

check('chat non-streaming with usage', async () => {
  const r = await client.chat.completions.create({
    model: localModel,
    messages: [{ role: 'user', content: 'Say hi' }],
    max_tokens: 5,
  });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

check('chat non-streaming, raw response headers', async () => {
  const { data, response } = await client.chat.completions
    .create({ model: localModel, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 })
    .withResponse();
  assert.equal(data.object, 'chat.completion');
  for (const h of ['x-request-id', 'x-tiergate-tier', 'x-tiergate-model', 'x-tiergate-score',
    'x-tiergate-cache', 'x-tiergate-cost-usd']) {
    assert.ok(response.headers.get(h) !== null, `header ${h}`);
  }
  assert.equal(response.headers.get('x-tiergate-tier'), 'local');
});

for (const model of [localModel, remoteModel]) {
  check(`chat streaming with include_usage (${model})`, async () => {
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Say hi' }],
      max_tokens: 6,
      stream: true,
      stream_options: { include_usage: true },
    });
    let ids = new Set();
    let text = '';
    let usage = null;
    let finish = null;
    for await (const chunk of stream) {
      ids.add(chunk.id);
      assert.equal(chunk.object, 'chat.completion.chunk');
      if (chunk.choices.length > 0) {
        text += chunk.choices[0].delta?.content ?? '';
        finish = chunk.choices[0].finish_reason ?? finish;
      }
      if (chunk.usage) {
        usage = chunk.usage;
        assert.equal(chunk.choices.length, 0);
      }
    }
    assert.equal(ids.size, 1, 'same id in every chunk');
    assert.ok(text.length > 0);
    assert.ok(finish === 'stop' || finish === 'length');
    assert.ok(usage && usage.completion_tokens > 0, 'usage chunk');
  });
}

check('chat stream helper (runner) collects the final message', async () => {
  const runner = client.chat.completions.stream({
    model: remoteModel,
    messages: [{ role: 'user', content: 'hi' }],
  });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.content, 'Hello from the fake upstream.');
});

check('models list and retrieve', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes('auto'));
  assert.ok(ids.includes(localModel));
  const m = await client.models.retrieve('auto');
  assert.equal(m.id, 'auto');
  assert.equal(m.object, 'model');
});

check('responses non-streaming', async () => {
  const r = await client.responses.create({
    model: localModel,
    input: 'hello',
    instructions: 'answer briefly',
    max_output_tokens: 5,
  });
  assert.equal(r.object, 'response');
  assert.equal(r.status, 'completed');
  assert.equal(typeof r.output_text, 'string');
  assert.ok(r.usage.output_tokens > 0);
});

check('responses streaming', async () => {
  const stream = await client.responses.create({
    model: remoteModel,
    input: [{ role: 'user', content: 'hello' }],
    stream: true,
  });
  const types = [];
  let deltas = '';
  let completed = null;
  for await (const ev of stream) {
    types.push(ev.type);
    if (ev.type === 'response.output_text.delta') deltas += ev.delta;
    if (ev.type === 'response.completed') completed = ev.response;
  }
  assert.equal(types[0], 'response.created');
  assert.ok(types.includes('response.output_text.delta'));
  assert.ok(completed, 'response.completed');
  assert.equal(deltas, 'Hello from the fake upstream.');
  assert.equal(completed.output[0].content[0].text, deltas);
});

check('embeddings (SDK default base64 decoding)', async () => {
  const r = await client.embeddings.create({ model: 'auto', input: ['one', 'two'] });
  assert.equal(r.data.length, 2);
  assert.ok(Array.isArray(r.data[0].embedding) && r.data[0].embedding.length > 8);
  const norm = Math.sqrt(r.data[0].embedding.reduce((s, x) => s + x * x, 0));
  assert.ok(Math.abs(norm - 1) < 0.02, `unit norm, got ${norm}`);
});

check('error classes', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found');
  await assert.rejects(
    client.chat.completions.create({ model: localModel, messages: 'nope' }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'messages');
  const bad = new OpenAI({ baseURL, apiKey: 'wrong-key', maxRetries: 0 });
  await assert.rejects(bad.models.list(),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
  await assert.rejects(
    client.post('/classify', { body: { text: 'x', labels: ['a', 'a'] } }),
    (e) => e instanceof OpenAI.UnprocessableEntityError && e.status === 422);
});

check('a single attempt when x-should-retry: false', async () => {
  const retrying = new OpenAI({ baseURL, apiKey, maxRetries: 3, fetch: countingFetch });
  calls = 0;
  let err = null;
  try {
    await retrying.chat.completions.create({ model: deadModel, messages: [{ role: 'user', content: 'x' }] });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof OpenAI.APIError && err.status >= 500, `got ${err}`);
  assert.equal(err.headers.get('x-should-retry'), 'false');
  assert.equal(calls, 1, 'the SDK must not retry');
});

let failed = 0;
for (const { name, fn } of checks) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
  }
}
console.log(`${checks.length - failed}/${checks.length} checks passed`);
process.exit(failed === 0 ? 0 : 1);
