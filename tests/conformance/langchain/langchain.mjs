// tiergate against LangChain's ChatOpenAI (@langchain/openai 0.6) with configuration.baseURL
// pointed at tiergate: invoke and stream on the local tier (with usage metadata), batch, tool
// binding (the local tier has no tool calling: through the `auto` alias tiergate sends it to the
// remote tier, here the fake upstream), withStructuredOutput by function calling and by JSON
// schema (response_format json_schema: either tier may serve it, the parsed object must validate),
// and the LangChain error codes for 401 and 404.
//
//   TIERGATE_BASE_URL=http://127.0.0.1:8080/v1 TIERGATE_API_KEY=... node langchain.mjs
//
// Exits 0 when every check passed; prints one line per check.
import assert from 'node:assert/strict';
import { ChatOpenAI } from '@langchain/openai';
import { HumanMessage, SystemMessage } from '@langchain/core/messages';
import { tool } from '@langchain/core/tools';
import { z } from 'zod';

const baseURL = process.env.TIERGATE_BASE_URL;
const apiKey = process.env.TIERGATE_API_KEY ?? 'none';
const localModel = process.env.TIERGATE_LOCAL_MODEL ?? 'phi-3.5-mini';
const autoModel = process.env.TIERGATE_AUTO_MODEL ?? 'auto';
assert.ok(baseURL, 'TIERGATE_BASE_URL is required');

// What tiergate saw: every request body and the x-tiergate-* response headers, through the
// fetch the OpenAI client inside ChatOpenAI uses.
const seen = [];
const recordingFetch = async (url, init) => {
  const res = await fetch(url, init);
  const h = {};
  for (const [k, v] of res.headers) if (k.startsWith('x-tiergate-')) h[k] = v;
  seen.push({ url: String(url), body: init?.body ? JSON.parse(init.body) : null, headers: h,
              status: res.status });
  return res;
};
const chat = (model, extra = {}) =>
  new ChatOpenAI({
    model,
    apiKey,
    maxTokens: 8,
    temperature: 0,
    maxRetries: 0,
    timeout: 120000,
    configuration: { baseURL, fetch: recordingFetch },
    ...extra,
  });

const checks = [];
const check = (name, fn) => checks.push({ name, fn });

check('invoke on the local tier', async () => {
  seen.length = 0;
  const msg = await chat(localModel).invoke([
    new SystemMessage('You are terse.'),
    new HumanMessage('Say hi'),
  ]);
  assert.equal(typeof msg.content, 'string');
  assert.ok(msg.usage_metadata.input_tokens > 0, 'usage_metadata.input_tokens');
  assert.ok(msg.usage_metadata.output_tokens > 0, 'usage_metadata.output_tokens');
  assert.equal(msg.usage_metadata.total_tokens,
               msg.usage_metadata.input_tokens + msg.usage_metadata.output_tokens);
  assert.ok(['stop', 'length'].includes(msg.response_metadata.finish_reason));
  assert.ok(msg.response_metadata.model_name, 'response_metadata.model_name');
  assert.equal(seen.length, 1);
  assert.match(seen[0].url, /\/v1\/chat\/completions$/);
  assert.equal(seen[0].body.model, localModel);
  assert.equal(seen[0].body.stream, false);
  assert.equal(seen[0].headers['x-tiergate-tier'], 'local');
});

check('stream on the local tier with usage', async () => {
  seen.length = 0;
  const stream = await chat(localModel).stream('Count to three');
  let text = '';
  let chunks = 0;
  let usage;
  for await (const c of stream) {
    chunks++;
    if (typeof c.content === 'string') text += c.content;
    if (c.usage_metadata) usage = c.usage_metadata;
  }
  assert.ok(chunks >= 2, `got ${chunks} chunks`);
  assert.equal(typeof text, 'string');
  assert.ok(usage, 'a usage chunk (stream_options.include_usage)');
  assert.ok(usage.input_tokens > 0 && usage.output_tokens > 0);
  assert.equal(seen[0].body.stream, true);
  assert.equal(seen[0].body.stream_options?.include_usage, true);
  assert.equal(seen[0].headers['x-tiergate-tier'], 'local');
});

check('batch of three', async () => {
  const out = await chat(localModel).batch(['one', 'two', 'three']);
  assert.equal(out.length, 3);
  for (const m of out) assert.equal(typeof m.content, 'string');
});

check('bindTools goes to the remote tier and returns tool calls', async () => {
  seen.length = 0;
  const weather = tool(async ({ city }) => `sunny in ${city}`, {
    name: 'get_weather',
    description: 'Weather for a city',
    schema: z.object({ city: z.string() }),
  });
  const model = chat(autoModel).bindTools([weather], { tool_choice: 'get_weather' });
  const msg = await model.invoke('What is the weather in Paris?');
  assert.equal(msg.tool_calls.length, 1);
  assert.equal(msg.tool_calls[0].name, 'get_weather');
  assert.equal(typeof msg.tool_calls[0].args.city, 'string');
  assert.equal(seen[0].body.tools[0].function.name, 'get_weather');
  assert.equal(seen[0].headers['x-tiergate-tier'], 'remote');
});

check('withStructuredOutput (functionCalling) parses the object', async () => {
  const Person = z.object({ name: z.string(), age: z.number().int() });
  const model = chat(autoModel).withStructuredOutput(Person, { name: 'person', method: 'functionCalling' });
  const p = await model.invoke('Alice is 30 years old.');
  assert.equal(typeof p.name, 'string');
  assert.equal(typeof p.age, 'number');
  assert.equal(Person.parse(p).age, p.age);
});

check('withStructuredOutput (jsonSchema) parses the object', async () => {
  seen.length = 0;
  const Item = z.object({ sku: z.string(), qty: z.number().int() });
  const model = chat(autoModel).withStructuredOutput(Item, { name: 'item', method: 'jsonSchema' });
  const it = await model.invoke('Two of SKU A-1');
  Item.parse(it);
  assert.equal(seen[0].body.response_format.type, 'json_schema');
  assert.ok(['local', 'remote'].includes(seen[0].headers['x-tiergate-tier']));
});

check('withStructuredOutput (jsonSchema) pinned to the local model', async () => {
  seen.length = 0;
  const Item = z.object({ sku: z.string(), qty: z.number().int(), rush: z.boolean() });
  const model = chat(localModel, { maxTokens: 64 })
    .withStructuredOutput(Item, { name: 'item', method: 'jsonSchema' });
  const it = await model.invoke('Two of SKU A-1, urgent');
  Item.parse(it);
  console.log(`     (tier ${seen[0].headers['x-tiergate-tier']}: ${JSON.stringify(it).slice(0, 80)}), fallback: ${seen[0].headers['x-tiergate-fallback'] ?? 'none'}`);
});

check('401 carries lc_error_code MODEL_AUTHENTICATION', async () => {
  await assert.rejects(chat(localModel, { apiKey: 'wrong-key' }).invoke('hi'), (e) => {
    assert.equal(e.status, 401);
    assert.equal(e.lc_error_code, 'MODEL_AUTHENTICATION');
    return true;
  });
});

check('unknown model is 404 MODEL_NOT_FOUND', async () => {
  await assert.rejects(chat('no-such-model').invoke('hi'), (e) => {
    assert.equal(e.status, 404);
    assert.equal(e.lc_error_code, 'MODEL_NOT_FOUND');
    assert.equal(e.error?.type ?? e.type, 'invalid_request_error');
    return true;
  });
});

let failed = 0;
for (const { name, fn } of checks) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
    if (seen.length) console.log(`     last exchange: ${JSON.stringify(seen[seen.length - 1]).slice(0, 2000)}`);
  }
}
console.log(failed ? `${failed} of ${checks.length} checks failed` : `all ${checks.length} checks passed`);
process.exit(failed ? 1 : 0);
