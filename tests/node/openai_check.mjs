// The official openai npm package against the edge: a streamed tool call and the turn with its result, a strict
// json_schema answer, embeddings, and a streamed Responses call. Prints one JSON line; exits 1 on any failure.
// Run by tests/integration/test_node_client.py with CONFLUX_BASE and CONFLUX_KEY set.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.CONFLUX_BASE, apiKey: process.env.CONFLUX_KEY, timeout: 120000 });
const model = "smollm2-135m-instruct";
const city = { type: "object", properties: { city: { type: "string" }, days: { type: "integer", minimum: 1, maximum: 7 } },
               required: ["city", "days"], additionalProperties: false };
const tools = [{ type: "function", function: { name: "get_weather", description: "Weather forecast", parameters: city } }];
const ask = [{ role: "user", content: "What is the weather in Oslo for 3 days?" }];
const out = {};

// 1. streamed tool call: id and name first, then argument fragments
const stream = await client.chat.completions.create({ model, messages: ask, tools, tool_choice: "required", stream: true });
let id = null, name = null, args = "", finish = null;
for await (const chunk of stream) {
  const choice = chunk.choices[0];
  if (!choice) continue;
  for (const tc of choice.delta.tool_calls ?? []) {
    if (tc.index !== 0) continue;  // with parallel calls allowed, the model may make more than one
    if (tc.id) { id = tc.id; name = tc.function?.name; }
    args += tc.function?.arguments ?? "";
  }
  finish = choice.finish_reason ?? finish;
}
let parsed;
try { parsed = JSON.parse(args); } catch (e) { throw new Error(`arguments are not JSON: ${JSON.stringify({ id, name, args, finish })}`); }
if (!id || name !== "get_weather" || finish !== "tool_calls" || typeof parsed.city !== "string"
    || !Number.isInteger(parsed.days) || parsed.days < 1 || parsed.days > 7) {
  throw new Error(`bad streamed call: ${JSON.stringify({ id, name, args, finish })}`);
}
out.tool_call = { name, arguments: parsed };
const follow = await client.chat.completions.create({ model, max_tokens: 40, tools, tool_choice: "none", messages: [
  ...ask, { role: "assistant", content: null, tool_calls: [{ id, type: "function", function: { name, arguments: args } }] },
  { role: "tool", tool_call_id: id, content: "Sunny, 21 degrees." }] });
if (!follow.choices[0].message.content) throw new Error("no answer after the tool result");
out.follow_up = follow.choices[0].finish_reason;

// 2. strict json_schema
const structured = await client.chat.completions.create({ model, messages: ask, max_tokens: 120,
  response_format: { type: "json_schema", json_schema: { name: "forecast", strict: true, schema: city } } });
const value = JSON.parse(structured.choices[0].message.content);
if (typeof value.city !== "string" || !Number.isInteger(value.days) || value.days < 1 || value.days > 7) {
  throw new Error(`bad structured answer: ${structured.choices[0].message.content}`);
}
out.json_schema = value;

// 3. embeddings (the package asks for base64 and decodes it)
const emb = await client.embeddings.create({ model: "all-minilm-l6-v2", input: ["Kafka keeps events.", "Hello"] });
if (emb.data.length !== 2 || emb.data[0].embedding.length !== 384) throw new Error("bad embeddings");
const norm = Math.sqrt(emb.data[0].embedding.reduce((s, x) => s + x * x, 0));
if (Math.abs(norm - 1) > 1e-3) throw new Error(`embedding norm ${norm}`);
out.embeddings = { count: emb.data.length, dim: 384, tokens: emb.usage.prompt_tokens };

// 4. streamed Responses call
const rstream = await client.responses.create({ model, input: "Say hi", max_output_tokens: 400, temperature: 0, stream: true });
let text = "", completed = null;
for await (const ev of rstream) {
  if (ev.type === "response.output_text.delta") text += ev.delta;
  if (ev.type === "response.completed") completed = ev.response;
}
if (!completed || !text || completed.output[0].content[0].text !== text) throw new Error("bad streamed response");
out.responses = { status: completed.status, chars: text.length };

console.log(JSON.stringify(out));
