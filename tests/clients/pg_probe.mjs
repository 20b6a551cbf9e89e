// Drives node-postgres (npm `pg`) the way an application would, for tests/e2e/test_node_pg_client.py.
//
// Usage: node pg_probe.mjs < '{"connection": {...}, "steps": [...]}'
// connection: {host, port, user, database, caFile?, servername?}; the password comes from PGW_PASSWORD so the
// token never shows in `ps` or on disk. With caFile the connection is TLS, verified against that CA.
// steps, run in order on one Client:
//   {"op": "query", "sql": "...", "params": [...]?, "name": "..."?, "mode": "extended"?}
//       pg sends a query without params as a simple Query, and one with params, a name or mode "extended"
//       through Parse/Bind/Execute.
//   {"op": "cancel", "sql": "...", "delayMs": N}   run sql; after N ms a second Client sends a CancelRequest
// A refused login prints {op: "connect", ok: false, code, message} and exits with status 2.
// Otherwise it prints one JSON line per step: {op, ok, value (first column of the first row), command, rowCount, code,
// message, tx (IDLE, INTRANS or INERROR from the last ReadyForQuery)}.
import { readFileSync } from 'node:fs';
import pg from 'pg';

const TX = { I: 'IDLE', T: 'INTRANS', E: 'INERROR' };
const input = JSON.parse(readFileSync(0, 'utf8'));
const { caFile, servername, ...connection } = input.connection;
const config = { ...connection, password: process.env.PGW_PASSWORD };
if (caFile) {
  config.ssl = { ca: readFileSync(caFile, 'utf8'), servername };
}

const client = new pg.Client(config);
client.on('error', (err) => console.error(`connection error: ${err.message}`));
try {
  await client.connect();
} catch (err) {  // a refused login: reported like a step, exit status 2
  if (err.code === undefined) throw err;
  console.log(JSON.stringify({ op: 'connect', ok: false, code: err.code, message: err.message }));
  process.exit(2);
}
// pg settles a failed query on its ErrorResponse, before the ReadyForQuery that carries the transaction status:
// each step sends one Sync or Query, so wait for its ReadyForQuery before reporting.
let ready = null;
client.connection.on('readyForQuery', (msg) => ready?.(TX[msg.status] ?? msg.status));
const nextReady = () => new Promise((resolve) => { ready = resolve; });

async function run(step) {
  if (step.op === 'query') {
    const query = { text: step.sql, values: step.params, name: step.name };
    if (step.mode) query.queryMode = step.mode;
    return client.query(query);
  }
  if (step.op === 'cancel') {
    const query = new pg.Query(step.sql);
    const done = new Promise((resolve, reject) => {
      query.on('end', resolve);
      query.on('error', reject);
    });
    client.query(query);
    const timer = setTimeout(() => new pg.Client(config).cancel(client, query), step.delayMs);
    try {
      return await done;
    } finally {
      clearTimeout(timer);
    }
  }
  throw new Error(`unknown step: ${step.op}`);
}

for (const step of input.steps) {
  const out = { op: step.op };
  const tx = nextReady();
  try {
    const result = await run(step);
    const value = result.rows?.length ? Object.values(result.rows[0])[0] : null;
    Object.assign(out, { ok: true, command: result.command, rowCount: result.rowCount,
      value: value === null ? null : String(value) });
  } catch (err) {
    if (err.code === undefined) throw err;  // not a server error: a probe or driver failure, shown on stderr
    Object.assign(out, { ok: false, code: err.code, message: err.message });
  }
  out.tx = await tx;
  console.log(JSON.stringify(out));
}
await client.end();
