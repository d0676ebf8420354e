#!/usr/bin/env node
// Minimal Node client: loads router.proto at run time, calls the health Check and Route,
// and prints one JSON object. Usage: node client.js HOST:PORT '<RouteRequest as JSON>'
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ROUTER_PROTO = path.join(__dirname, '..', '..', 'router_model', 'service', 'proto', 'router', 'v1', 'router.proto');
const HEALTH_PROTO = path.join(__dirname, 'proto', 'grpc', 'health', 'v1', 'health.proto');
const LOAD_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function call(client, method, request, deadlineMs) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + deadlineMs);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

async function main() {
  const [address, requestJson] = process.argv.slice(2);
  if (!address || !requestJson) {
    console.error('usage: node client.js HOST:PORT \'{"prompt": "..."}\'');
    process.exit(2);
  }
  const routerDef = grpc.loadPackageDefinition(protoLoader.loadSync(ROUTER_PROTO, LOAD_OPTIONS));
  const healthDef = grpc.loadPackageDefinition(protoLoader.loadSync(HEALTH_PROTO, LOAD_OPTIONS));
  const credentials = grpc.credentials.createInsecure();
  const router = new routerDef.router.v1.Router(address, credentials);
  const health = new healthDef.grpc.health.v1.Health(address, credentials);
  const out = {};
  try {
    out.health = (await call(health, 'Check', { service: 'router.v1.Router' }, 5000)).status;
    out.route = await call(router, 'Route', JSON.parse(requestJson), 10000);
  } catch (err) {
    out.error = { code: grpc.status[err.code] || err.code, details: err.details };
  } finally {
    router.close();
    health.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
