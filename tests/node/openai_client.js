// Calls the router gateway with the official Node `openai` SDK (tests/unit/test_gateway_node_sdk.py).
// Usage: node openai_client.js BASE_URL PROMPT
// Prints one JSON object: for each call, what the SDK returned and the gateway's x-router-* headers.
"use strict";

const OpenAI = require("openai");

function routed(response) {
  return { model: response.headers.get("x-router-model"), reason: response.headers.get("x-router-reason") };
}

async function main() {
  const [baseURL, prompt] = process.argv.slice(2);
  const client = new OpenAI({ baseURL, apiKey: "sk-node-caller", maxRetries: 0, defaultHeaders: { "x-test-id": "node-sdk" } });
  const messages = [{ role: "user", content: prompt }];
  const out = {};

  const chat = await client.chat.completions.create({ model: "auto", messages }).withResponse();
  out.chat = { text: chat.data.choices[0].message.content, ...routed(chat.response) };

  const chatStream = await client.chat.completions
    .create({ model: "auto", messages, stream: true, stream_options: { include_usage: true } })
    .withResponse();
  let text = "";
  let usage = null;
  for await (const chunk of chatStream.data) {
    text += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  out.chat_stream = { text, usage, ...routed(chatStream.response) };

  const resp = await client.responses.create({ model: "auto", input: prompt, instructions: "Be brief." }).withResponse();
  out.responses = { text: resp.data.output_text, id: resp.data.id, ...routed(resp.response) };

  const respStream = await client.responses.create({ model: "auto", input: prompt, stream: true }).withResponse();
  const types = [];
  let deltas = "";
  let completed = null;
  for await (const event of respStream.data) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") deltas += event.delta;
    if (event.type === "response.completed") completed = event.response;
  }
  out.responses_stream = { types, text: deltas, usage: completed && completed.usage, ...routed(respStream.response) };

  // A tool loop: the function's result goes back to the model that made the call.
  const tools = [{ type: "function", name: "get_weather", parameters: { type: "object", properties: {} } }];
  const first = await client.responses.create({ model: "auto", input: messages, tools }).withResponse();
  const call = first.data.output.find((item) => item.type === "function_call");
  const input = [...messages, ...first.data.output, { type: "function_call_output", call_id: call.call_id, output: "18 C" }];
  const second = await client.responses.create({ model: "auto", input }).withResponse();
  out.tool_loop = [routed(first.response), { text: second.data.output_text, ...routed(second.response) }];

  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
