// Checks the output of `n8n execute --id ID --rawOutput` for one of the deploy/n8n workflows.
//   node check-result.mjs <workflow-name> <output-file>
import fs from 'node:fs';
import assert from 'node:assert/strict';

const [wf, file] = process.argv.slice(2);
const text = fs.readFileSync(file, 'utf8');
// --rawOutput prints JSON.stringify(run, null, 2): its first line is a lone "{" (log lines come first)
const m = /^\{$/m.exec(text);
const start = m ? m.index : -1;
assert.ok(start >= 0, `no JSON in n8n's output:\n${text.slice(0, 2000)}`);
const end = text.lastIndexOf('\n}');
const run = JSON.parse(text.slice(start, end + 2));
const runData = run?.data?.resultData?.runData ?? run?.resultData?.runData;
assert.ok(runData, `no runData in n8n's output:\n${text.slice(0, 2000)}`);
assert.equal(run?.data?.resultData?.error ?? run?.resultData?.error, undefined, 'the execution has an error');
const out = (node) => {
  const r = runData[node];
  assert.ok(r && r.length, `node '${node}' did not run`);
  const last = r[r.length - 1];
  assert.equal(last.error, undefined, `node '${node}' failed: ${JSON.stringify(last.error)}`);
  return last.data.main[0][0].json;
};

if (wf === 'tiergate-classify') {
  const j = out('Classify (tiergate)');
  assert.ok(['billing', 'bug', 'sales', 'other'].includes(j.label), `label ${j.label}`);
  assert.equal(typeof j.tier, 'string');
  assert.equal(typeof j.cost_usd, 'number');
  console.log(`classify: label=${j.label} tier=${j.tier} model=${j.model}`);
} else if (wf === 'tiergate-extract') {
  const j = out('Extract (tiergate)');
  assert.equal(typeof j.data, 'object');
  assert.equal(typeof j.data.item, 'string');
  assert.ok(Number.isInteger(j.data.quantity), `quantity ${j.data.quantity}`);
  assert.equal(typeof j.data.city, 'string');
  console.log(`extract: ${JSON.stringify(j.data).slice(0, 200)} tier=${j.tier}`);
} else if (wf === 'tiergate-chat-model') {
  for (const node of ['Basic LLM Chain', 'Basic LLM Chain (chat completions)']) {
    const j = out(node);
    assert.equal(typeof j.text, 'string', `${node}: text`);
    console.log(`${node}: ${JSON.stringify(j.text).slice(0, 120)}`);
  }
  for (const node of ['OpenAI Chat Model (Responses API)', 'OpenAI Chat Model (Chat Completions)']) {
    const r = runData[node];
    assert.ok(r && r.length && !r[0].error, `${node} did not run cleanly`);
  }
} else {
  throw new Error(`unknown workflow ${wf}`);
}
