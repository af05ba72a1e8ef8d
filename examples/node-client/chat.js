#!/usr/bin/env node
// Streams a chat generation from tandem's RouterService (gRPC) and prints tokens as they arrive.
//
//   npm ci
//   node chat.js "Why is the sky blue?"
//   node chat.js --address 127.0.0.1:50050 --max-tokens 64 --temperature 0 "Hello"
//
// The contracts are loaded at run time from proto/tandem/v1 (no generated code). Generated text
// goes to stdout as it streams; a one-line JSON summary (finish reason, usage, message count,
// time to first token) goes to stderr. Exit status: 0 on success, 1 on an RPC error, 2 on usage.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const USAGE = `usage: node chat.js [options] [prompt]

options:
  --address HOST:PORT   RouterService address (env TANDEM_ROUTER_GRPC_ADDRESS; default 127.0.0.1:50050)
  --model NAME          model (default: the first one ListModels returns)
  --system TEXT         system message
  --max-tokens N        tokens to generate (default 64)
  --temperature T       sampling temperature, 0 = greedy (default 0)
  --seed N              sampling seed
  --tenant NAME         tenant (separates KV cache between tenants)
  --timeout S           deadline of the whole call in seconds (default 120)
  --proto-dir DIR       root of the .proto files (env TANDEM_PROTO_DIR; default ../../proto)
  --quiet               do not print the generated text
  -h, --help            this help`;

function parseCommandLine(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      address: { type: 'string' },
      model: { type: 'string' },
      system: { type: 'string' },
      'max-tokens': { type: 'string', default: '64' },
      temperature: { type: 'string', default: '0' },
      seed: { type: 'string' },
      tenant: { type: 'string', default: '' },
      timeout: { type: 'string', default: '120' },
      'proto-dir': { type: 'string' },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const number = (name, value, integer) => {
    const parsed = Number(value);
    if (!Number.isFinite(parsed) || (integer && !Number.isInteger(parsed))) {
      throw new Error(`--${name}: not a number: ${value}`);
    }
    return parsed;
  };
  return {
    help: values.help,
    address: values.address || process.env.TANDEM_ROUTER_GRPC_ADDRESS || '127.0.0.1:50050',
    model: values.model,
    system: values.system,
    maxTokens: number('max-tokens', values['max-tokens'], true),
    temperature: number('temperature', values.temperature, false),
    seed: values.seed === undefined ? undefined : number('seed', values.seed, true),
    tenant: values.tenant,
    timeoutS: number('timeout', values.timeout, false),
    protoDir: values['proto-dir'] || process.env.TANDEM_PROTO_DIR
      || path.resolve(__dirname, '..', '..', 'proto'),
    quiet: values.quiet,
    prompt: positionals.join(' ') || 'Write one sentence about the sea.',
  };
}

function loadRouterService(protoDir) {
  const definition = protoLoader.loadSync('tandem/v1/router.proto', {
    includeDirs: [protoDir],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).tandem.v1.RouterService;
}

function deadline(seconds) {
  return new Date(Date.now() + seconds * 1000);
}

function listModels(client, timeoutS) {
  return new Promise((resolve, reject) => {
    client.ListModels({}, { deadline: deadline(timeoutS) }, (error, reply) => {
      if (error) reject(error);
      else resolve(reply.models);
    });
  });
}

function chat(client, request, options) {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const elapsedMs = () => Number(process.hrtime.bigint() - started) / 1e6;
    const summary = { messages: 0, tokens: 0, ttft_ms: null };
    const call = client.Chat(request, { deadline: deadline(options.timeoutS) });
    const cancel = () => call.cancel();
    process.once('SIGINT', cancel);
    call.on('data', (message) => {
      summary.messages += 1;
      const delta = message.delta || { token_ids: [], text: '' };
      if (delta.token_ids.length > 0 && summary.ttft_ms === null) summary.ttft_ms = elapsedMs();
      summary.tokens += delta.token_ids.length;
      if (delta.text && !options.quiet) process.stdout.write(delta.text);
      if (message.request_id) summary.request_id = message.request_id;
      if (message.engine) summary.engine = message.engine;
      if (message.finish_reason && message.finish_reason !== 'FINISH_REASON_UNSPECIFIED') {
        summary.finish_reason = message.finish_reason;
      }
      if (message.usage) summary.usage = message.usage;
    });
    call.on('error', (error) => {
      process.removeListener('SIGINT', cancel);
      reject(error);
    });
    call.on('end', () => {
      process.removeListener('SIGINT', cancel);
      summary.total_ms = elapsedMs();
      resolve(summary);
    });
  });
}

async function main() {
  let options;
  try {
    options = parseCommandLine(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`${error.message}\n${USAGE}\n`);
    return 2;
  }
  if (options.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const RouterService = loadRouterService(options.protoDir);
  const client = new RouterService(options.address, grpc.credentials.createInsecure());
  try {
    let model = options.model;
    if (!model) {
      const models = await listModels(client, options.timeoutS);
      if (models.length === 0) throw new Error('the router serves no model');
      model = models[0].id;
    }
    const messages = [];
    if (options.system) messages.push({ role: 'system', content: options.system });
    messages.push({ role: 'user', content: options.prompt });
    const sampling = { max_tokens: options.maxTokens, temperature: options.temperature };
    if (options.seed !== undefined) sampling.seed = options.seed;
    const summary = await chat(
      client, { model, messages, sampling, tenant: options.tenant }, options);
    if (!options.quiet) process.stdout.write('\n');
    process.stderr.write(`${JSON.stringify({ model, ...summary })}\n`);
    return 0;
  } catch (error) {
    const code = error.code === undefined ? '' : ` (${grpc.status[error.code] || error.code})`;
    process.stderr.write(`tandem chat failed${code}: ${error.details || error.message}\n`);
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; });
