// dctrl's exports handed to Caravan's own libraries (tests/test_payout_caravan.py runs this).
//
// Reads one job as JSON on stdin:
//   {"wallet": <the Caravan wallet file, text>, "descriptor": <a descriptor, with checksum>,
//    "indexes": [0, 1, ...], "psbt": <base64, optional>, "signed": <base64, optional>}
// and writes what Caravan's code makes of it as JSON on stdout (a summary for people on stderr).
// Nothing is compared with dctrl's own values here: the test does that. Done the way Caravan's
// coordinator does it (apps/coordinator in github.com/caravan-bitcoin/caravan):
//   - loading a wallet file: CreateWallet.validateConfig (components/Wallet/index.jsx) checks the
//     properties and calls @caravan/bitcoin's validators; that function is in the app, not in a
//     package, so the same validators are called here on the same fields (validateWalletFile);
//   - addresses: WalletGenerator builds ExtendedPublicKey structs from the file's xpub, xfp and
//     bip32Path, a braid per branch (generateBraid, "0" receive, "1" change) and
//     deriveMultisigByPath;
//   - descriptors: hooks/descriptors.ts (encodeDescriptors from the loaded wallet) and
//     WalletDescriptorImporter (getWalletFromDescriptor), @caravan/descriptors;
//   - a PSBT: utils/psbtUtils.ts loadPsbt (@caravan/psbt's autoLoadPSBT), signatures checked with
//     validateMultisigPsbtSignature; translatePSBT is what it hands to non-PSBT signing devices.
// Also caravan-rs's own parser of a wallet file (CaravanConfig.from_str, the WebAssembly inside
// @caravan/descriptors).

import { createRequire, register } from "node:module";
import * as bitcoin from "@caravan/bitcoin";
import * as psbtlib from "@caravan/psbt";

register("./hooks.mjs", import.meta.url);
const descriptors = await import("@caravan/descriptors");
const require = createRequire(import.meta.url);
const caravanRs = require("@caravan/descriptors/dist/caravan-rs/pkg-nodejs/caravan_rs.js");

const hex = (b) => Buffer.from(b).toString("hex");
const say = (...a) => process.stderr.write(a.join(" ") + "\n");
const attempt = (f) => {
  try {
    return f();
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
};

// -- the wallet file ------------------------------------------------------------------------

function validateWalletFile(config) {
  const errors = [];
  for (const p of ["name", "addressType", "network", "quorum", "extendedPublicKeys"]) {
    if (!(p in config)) errors.push(`missing property "${p}"`);
  }
  if (errors.length) return errors;
  for (const p of ["requiredSigners", "totalSigners"]) {
    if (!(p in config.quorum)) errors.push(`missing property "quorum.${p}"`);
  }
  if (config.startingAddressIndex !== undefined) {
    const e = bitcoin.validateBIP32Index(String(config.startingAddressIndex), { mode: "unhardened" });
    if (e) errors.push(`startingAddressIndex: ${e}`);
  }
  if (config.client && !("type" in config.client)) errors.push('missing property "client.type"');
  if (!Object.values(bitcoin.Network).includes(config.network)) errors.push(`unknown network ${config.network}`);
  if (!bitcoin.MULTISIG_ADDRESS_TYPES[config.addressType]) errors.push(`unknown addressType ${config.addressType}`);
  const network = config.network === "regtest" ? "testnet" : config.network; // as the coordinator does
  const seen = new Set();
  config.extendedPublicKeys.forEach((k, i) => {
    const n = i + 1;
    if (typeof k.name !== "string") errors.push(`key ${n}: name must be a string`);
    if (seen.has(k.xpub)) errors.push(`key ${n}: duplicate xpub`);
    seen.add(k.xpub);
    const x = bitcoin.validateExtendedPublicKey(k.xpub, network);
    if (x) errors.push(`key ${n}: ${x}`);
    const p = bitcoin.validateBIP32Path(k.bip32Path);
    if (p) errors.push(`key ${n}: ${p}`);
    const f = attempt(() => bitcoin.validateRootFingerprint(k.xfp));
    if (f && f.error) errors.push(`key ${n}: ${f.error}`);
  });
  const { requiredSigners, totalSigners } = config.quorum;
  if (totalSigners !== config.extendedPublicKeys.length) errors.push("quorum.totalSigners is not the number of keys");
  if (!(requiredSigners >= 1 && requiredSigners <= totalSigners)) errors.push("quorum.requiredSigners out of range");
  return errors;
}

function walletKeys(config) {
  // WalletGenerator.generateRichExtendedPublicKeys
  return config.extendedPublicKeys.map((k) => {
    const xpub = bitcoin.ExtendedPublicKey.fromBase58(k.xpub);
    xpub.setRootFingerprint(k.xfp);
    xpub.setBip32Path(k.bip32Path);
    xpub.addBase58String();
    return xpub;
  });
}

const derivations = (list) =>
  (list || []).map((d) => ({ xfp: hex(d.masterFingerprint), path: d.path, pubkey: hex(d.pubkey) }));

function makeWallet(config) {
  const keys = walletKeys(config);
  const braids = ["0", "1"].map((branch) =>
    bitcoin.generateBraid(config.network, config.addressType, keys, config.quorum.requiredSigners, branch));
  const at = (branch, index) => bitcoin.deriveMultisigByPath(braids[branch], `m/${branch}/${index}`);
  // a co-signer's question for a script in a PSBT: is it the wallet's, at the path it names?
  const owns = (scriptHex, witnessScriptHex, derivs) => {
    if (!derivs.length) return { mine: false, why: "no bip32 derivations" };
    const d = derivs[0];
    const key = config.extendedPublicKeys.find((k) => k.xfp === d.xfp);
    if (!key) return { mine: false, why: `fingerprint ${d.xfp} is not a key of the wallet` };
    const base = key.bip32Path.replace(/h/g, "'");
    if (!d.path.startsWith(`${base}/`)) return { mine: false, why: `path ${d.path} is not under ${base}` };
    const rest = d.path.slice(base.length + 1).split("/");
    if (rest.length !== 2 || !["0", "1"].includes(rest[0])) return { mine: false, why: `path ${d.path}: not branch/index` };
    const m = at(Number(rest[0]), Number(rest[1]));
    const expected = derivations(m.bip32Derivation).map((x) => JSON.stringify(x)).sort();
    const given = derivs.map((x) => JSON.stringify(x)).sort();
    const checks = {
      script: m.output.toString("hex") === scriptHex,
      witnessScript: m.redeem.output.toString("hex") === witnessScriptHex,
      derivations: JSON.stringify(expected) === JSON.stringify(given),
    };
    return { mine: Object.values(checks).every(Boolean), checks, branch: Number(rest[0]), index: Number(rest[1]),
             address: m.address };
  };
  return { keys, at, owns };
}

// -- the PSBT -------------------------------------------------------------------------------

function readPsbt(config, wallet, b64) {
  const network = bitcoin.networkData(config.network);
  const version = psbtlib.getPsbtVersionNumber(b64);
  const p = psbtlib.autoLoadPSBT(b64, { network });
  if (!p) return { error: "autoLoadPSBT could not parse it" };
  const inputs = p.txInputs.map((txin, i) => {
    const d = p.data.inputs[i];
    const ws = d.witnessScript ? hex(d.witnessScript) : null;
    const ms = ws ? bitcoin.generateMultisigFromHex(config.network, config.addressType, ws) : null;
    const derivs = derivations(d.bip32Derivation);
    return {
      txid: hex(Buffer.from(txin.hash).reverse()),
      vout: txin.index,
      sequence: txin.sequence,
      nonWitnessUtxo: d.nonWitnessUtxo ? hex(d.nonWitnessUtxo) : null,
      witnessUtxo: d.witnessUtxo ? { value: Number(d.witnessUtxo.value), script: hex(d.witnessUtxo.script) } : null,
      witnessScript: ws,
      multisig: ms ? { address: ms.address, script: hex(ms.output), m: ms.redeem.m, n: ms.redeem.n,
                       pubkeys: ms.redeem.pubkeys.map(hex) } : null,
      bip32Derivation: derivs,
      wallet: d.witnessUtxo && ws ? wallet.owns(hex(d.witnessUtxo.script), ws, derivs) : { mine: false, why: "no utxo or script" },
      partialSig: (d.partialSig || []).map((s) => ({ pubkey: hex(s.pubkey), signature: hex(s.signature) })),
    };
  });
  const outputs = p.txOutputs.map((o, j) => {
    const d = p.data.outputs[j];
    const derivs = derivations(d.bip32Derivation);
    return {
      address: o.address,
      value: Number(o.value),
      script: hex(o.script),
      bip32Derivation: derivs,
      witnessScript: d.witnessScript ? hex(d.witnessScript) : null,
      wallet: derivs.length ? wallet.owns(hex(o.script), d.witnessScript ? hex(d.witnessScript) : "", derivs)
                            : { mine: false, why: "no bip32 derivations" },
    };
  });
  const globalXpubs = (p.data.globalMap.globalXpub || []).map((g) => ({
    xfp: hex(g.masterFingerprint), path: g.path, extendedPubkey: hex(g.extendedPubkey) }));
  // what Caravan hands a non-PSBT signing device, for each key of the wallet file
  const translated = config.extendedPublicKeys.map((k) => {
    const t = attempt(() => psbtlib.translatePSBT(config.network, config.addressType, b64,
                                                 { xfp: k.xfp, path: k.bip32Path }));
    if (t.error) return { xfp: k.xfp, error: t.error };
    return {
      xfp: k.xfp,
      inputs: t.unchainedInputs.map((u) => ({ txid: u.txid, index: u.index, amountSats: Number(u.amountSats),
                                              address: u.multisig.address })),
      outputs: t.unchainedOutputs.map((u) => ({ address: u.address, amountSats: Number(u.amountSats) })),
      signing: t.bip32Derivations.map((d) => ({ xfp: hex(d.masterFingerprint), path: d.path, pubkey: hex(d.pubkey) })),
    };
  });
  const v2 = attempt(() => {
    const x = psbtlib.PsbtV2.FromV0(b64, true);
    return { inputCount: x.PSBT_GLOBAL_INPUT_COUNT, outputCount: x.PSBT_GLOBAL_OUTPUT_COUNT,
             amounts: x.PSBT_OUT_AMOUNT.map(Number), scripts: x.PSBT_OUT_SCRIPT };
  });
  return { version, inputs, outputs, globalXpubs, translated, v2 };
}

function checkSignatures(read, b64) {
  // the coordinator's signature import: each signature against its input, segwit amount given
  return read.inputs.flatMap((inp, i) => inp.partialSig.map((s) => ({
    input: i,
    pubkey: s.pubkey,
    validatedAs: attempt(() => psbtlib.validateMultisigPsbtSignature(
      b64, i, Buffer.from(s.signature, "hex"), String(inp.witnessUtxo.value))),
  })));
}

// -- the job --------------------------------------------------------------------------------

const job = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
const out = {};
let config;
try {
  config = JSON.parse(job.wallet);
} catch (e) {
  out.config = { accepted: false, errors: [`Invalid JSON: ${e.message}`] };
}
if (config) {
  const errors = validateWalletFile(config);
  out.config = { accepted: errors.length === 0, errors };
  say(`wallet file: ${errors.length ? "REFUSED: " + errors.join("; ") : "accepted"} by the coordinator's checks ` +
      `(@caravan/bitcoin)`);
}
const indexes = job.indexes || [0];
if (config && out.config.accepted) {
  const wallet = makeWallet(config);
  out.braid = { receive: {}, change: {} };
  for (const i of indexes) {
    for (const [name, branch] of [["receive", 0], ["change", 1]]) {
      const m = wallet.at(branch, i);
      out.braid[name][i] = { address: m.address, script: hex(m.output), witnessScript: hex(m.redeem.output),
                             bip32Derivation: derivations(m.bip32Derivation) };
    }
  }
  say(`braids: receive 0 ${out.braid.receive[indexes[0]].address}, change 0 ${out.braid.change[indexes[0]].address}`);

  const rs = attempt(() => caravanRs.CaravanConfig.from_str(job.wallet));
  out.caravanRs = rs.error ? rs : {
    network: rs.network().to_string(),
    addressType: rs.address_type(),
    receive: Object.fromEntries(indexes.map((i) => [i, rs.external_address(i)])),
    change: Object.fromEntries(indexes.map((i) => [i, rs.internal_address(i)])),
    receiveDescriptor: rs.external_descriptor().to_string(),
    changeDescriptor: rs.internal_descriptor().to_string(),
  };
  say(`caravan-rs CaravanConfig.from_str: ${rs.error ? "REFUSED: " + rs.error : "parsed, receive 0 " + out.caravanRs.receive[indexes[0]]}`);

  // hooks/descriptors.ts: the loaded wallet, as the coordinator passes it to encodeDescriptors
  const multisigConfig = {
    requiredSigners: config.quorum.requiredSigners,
    keyOrigins: config.extendedPublicKeys.map(({ xfp, bip32Path, xpub }) => ({
      xfp, bip32Path: bitcoin.getMaskedDerivation({ xpub, bip32Path }), xpub })),
    addressType: config.addressType,
    network: config.network,
  };
  try {
    out.descriptors = { ...(await descriptors.encodeDescriptors(multisigConfig)),
                        multipath: await descriptors.encodeDescriptorWithMultipath(multisigConfig) };
    say(`encodeDescriptors: ${out.descriptors.multipath.slice(0, 40)}...#${out.descriptors.multipath.split("#")[1]}`);
  } catch (e) {
    out.descriptors = { error: String(e.message || e) };
    say(`encodeDescriptors: REFUSED: ${out.descriptors.error}`);
  }

  if (job.psbt) {
    out.psbt = readPsbt(config, wallet, job.psbt);
    if (!out.psbt.error) {
      for (const [i, inp] of out.psbt.inputs.entries()) {
        say(`psbt input ${i}: ${inp.witnessUtxo ? inp.witnessUtxo.value : "?"} sats from ${inp.multisig && inp.multisig.address}` +
            ` (${inp.multisig && inp.multisig.m} of ${inp.multisig && inp.multisig.n}), ` +
            (inp.wallet.mine ? `the wallet's (${inp.wallet.branch}/${inp.wallet.index}, ${inp.bip32Derivation.length} derivations match)`
                             : `NOT the wallet's: ${inp.wallet.why || JSON.stringify(inp.wallet.checks)}`));
      }
      for (const [j, o] of out.psbt.outputs.entries()) {
        say(`psbt output ${j}: ${o.value} sats to ${o.address}` +
            (o.wallet.mine ? `, the wallet's change (${o.wallet.branch}/${o.wallet.index})` : `, not the wallet's (${o.wallet.why || JSON.stringify(o.wallet.checks)})`));
      }
      for (const t of out.psbt.translated) {
        say(`translatePSBT for ${t.xfp}: ${t.error ? "REFUSED: " + t.error :
            `${t.inputs.length} input(s), outputs ${t.outputs.map((o) => o.amountSats).join(" + ")}, signs at ${t.signing.map((s) => s.path).join(", ")}`}`);
      }
      say(`PsbtV2.FromV0: ${out.psbt.v2.error ? "REFUSED: " + out.psbt.v2.error : `${out.psbt.v2.inputCount} in, ${out.psbt.v2.outputCount} out, amounts ${out.psbt.v2.amounts.join(", ")}`}`);
    } else {
      say(`psbt: REFUSED: ${out.psbt.error}`);
    }
  }
  if (job.signed) {
    const read = readPsbt(config, wallet, job.signed);
    out.signatures = checkSignatures(read, job.signed);
    for (const s of out.signatures) {
      say(`signature on input ${s.input} by ${s.pubkey.slice(0, 16)}...: ` +
          (s.validatedAs === s.pubkey ? "valid (validateMultisigPsbtSignature)" : `NOT valid: ${JSON.stringify(s.validatedAs)}`));
    }
  }
}
if (job.descriptor) {
  try {
    out.fromDescriptor = await descriptors.getWalletFromDescriptor(job.descriptor, config ? config.network : undefined);
    say(`getWalletFromDescriptor: ${out.fromDescriptor.requiredSigners} of ${out.fromDescriptor.keyOrigins.length} ${out.fromDescriptor.addressType} on ${out.fromDescriptor.network}`);
  } catch (e) {
    out.fromDescriptor = { error: String(e.message || e) };
    say(`getWalletFromDescriptor: REFUSED: ${out.fromDescriptor.error}`);
  }
}
process.stdout.write(JSON.stringify(out));
