#!/usr/bin/env node
// Compile the test contracts offline with solc-js and write the artifacts the package ships:
//   watcher/contracts/<Name>.json = {contractName, abi, bytecode, compiler}
// Usage (from the repo root): node contracts/compile.js
// solc-js comes from `npm install solc@0.8` (in .tools/ or any node_modules on the path).
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
let solc;
try {
  solc = require(path.join(root, ".tools", "node_modules", "solc"));
} catch (e) {
  solc = require("solc");
}

const CONTRACTS = ["TestToken", "Reverter", "TestAggregator", "Payout"];
const sources = {};
for (const name of CONTRACTS) {
  sources[`${name}.sol`] = { content: fs.readFileSync(path.join(__dirname, `${name}.sol`), "utf8") };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    // paris: no PUSH0, so the bytecode also runs on chains that lag behind Shanghai
    evmVersion: "paris",
    optimizer: { enabled: true, runs: 200 },
    metadata: { bytecodeHash: "none" },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

const outDir = path.join(root, "watcher", "contracts");
fs.mkdirSync(outDir, { recursive: true });
for (const name of CONTRACTS) {
  const c = output.contracts[`${name}.sol`][name];
  const artifact = {
    contractName: name,
    abi: c.abi,
    bytecode: "0x" + c.evm.bytecode.object,
    compiler: `solc-js ${solc.version()}`,
  };
  const file = path.join(outDir, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(artifact, null, 2) + "\n");
  console.log(`wrote ${path.relative(root, file)} (${c.evm.bytecode.object.length / 2} bytes)`);
}
