// Node's socket modules for the user-mode network, loaded when the NAT first
// needs a host socket rather than when a VM with a user-mode card is built.
// A fast-start `run -- CMD` has such a card (a command's default) and its
// guest mostly sends nothing: node:net, node:dgram and node:dns took about
// 4 ms of its start.

import { createRequire } from "node:module";

const load = createRequire(import.meta.url);

let net: typeof import("node:net") | undefined;
let dgram: typeof import("node:dgram") | undefined;
let dns: typeof import("node:dns") | undefined;

export const nodeNet = (): typeof import("node:net") => (net ??= load("node:net") as typeof import("node:net"));
export const nodeDgram = (): typeof import("node:dgram") => (dgram ??= load("node:dgram") as typeof import("node:dgram"));
export const nodeDns = (): typeof import("node:dns") => (dns ??= load("node:dns") as typeof import("node:dns"));
