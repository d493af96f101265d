// A hart running on another thread notices what this thread posts to it
// (requests.ts): a worker runs a guest spinning in a tight loop inside one
// run() call with a budget of billions of instructions, and this thread,
// with its own core instance on the same shared memory, posts REQ_EXIT or
// raises an interrupt line once the guest's loop counter in memory shows it
// spinning. Interpreter, and translated code made before
// the first execution (threshold 1), whose loop is either a block branching
// to itself or a jump back through the region's dispatch.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Worker } from "node:worker_threads";
import { instantiateCore } from "../vcpu/core.js";
import { iType, sType, bType, addi, li, csrrw, csrrs, Asm } from "../jit/testing/rv-encode.js";
import type { SpinJob, SpinStart, SpinResult } from "./testing/spin-worker.mjs";

const CODE = 0x8000_0000n;
const TOHOST = 0x8001_0000n;
const COUNTER = 0x8000_8000n; // a page of its own: stores to it do not hit translated code
/** A failure bound, not a speed target. */
const NOTICE_MS = 2000;
const T0 = 5, T1 = 6, S0 = 8;
const MEI_CAUSE = (1n << 63n) | 11n;

type Loop = "self" | "dispatch";

/** Enable machine external interrupts, then spin counting in t1 (and in
 *  memory, for the test to see). Trap handler: report through HTIF. */
function program(loop: Loop) {
  const a = new Asm();
  a.w(...li(T0, CODE + 0x800n), csrrw(0, 0x305, T0)); // mtvec
  a.w(...li(T0, 1n << 11n), csrrs(0, 0x304, T0)); //     mie.MEIE
  a.w(addi(T0, 0, 8), csrrs(0, 0x300, T0)); //           mstatus.MIE
  a.w(...li(S0, COUNTER));
  a.label("loop");
  a.w(addi(T1, T1, 1), sType(0, T1, S0, 3, 0x23)); //     sd t1, 0(s0)
  if (loop === "self") {
    a.w((at) => bType(a.at("loop") - at, 0, T1, 1)); // bne t1, x0, loop
  } else {
    a.j(0, "next");
    a.label("next");
    a.j(0, "loop");
  }
  const perIteration = loop === "self" ? 3 : 4;
  a.org(0x800);
  a.w(...li(T0, TOHOST), addi(T1, 0, 1), sType(0, T1, T0, 3, 0x23)); // sd t1, 0(t0)
  a.w(iType(0, 0, 0, 0, 0x6f)); // j .
  return { code: a.bytes(), loop: CODE + BigInt(a.at("loop")), prefix: a.at("loop") / 4, perIteration };
}

/** Start the spinning hart; `poke` runs on this thread once it spins. */
async function spin(loop: Loop, jit: boolean, poke: (core: ReturnType<typeof instantiateCore>, hart: number) => void) {
  const p = program(loop);
  const job: SpinJob = { code: p.code, at: CODE, tohost: TOHOST, counter: COUNTER, jit };
  const worker = new Worker(new URL("./testing/spin-worker.mjs", import.meta.url), { workerData: job });
  try {
    const messages: unknown[] = [];
    let wake: (() => void) | undefined;
    worker.on("message", (msg) => { messages.push(msg); wake?.(); });
    const failed = new Promise<never>((_, reject) => {
      worker.on("error", reject);
      worker.on("exit", (code) => reject(new Error(`worker exited (${code}) before reporting`)));
    });
    const next = async (ms: number): Promise<unknown> => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`nothing from the hart within ${ms} ms`)), ms); });
      try {
        while (messages.length === 0) await Promise.race([new Promise<void>((r) => { wake = r; }), timeout, failed]);
        return messages.shift();
      } finally {
        clearTimeout(timer);
      }
    };
    const { memory, hart, counter } = (await next(30_000)) as SpinStart;
    // Wait until it spins in its loop (translated before it first ran, with the JIT).
    const view = new DataView(memory.buffer);
    for (const t0 = Date.now(); view.getBigUint64(counter, true) < 1000n;) {
      if (Date.now() - t0 > 30_000) throw new Error("the guest never reached its loop");
      await new Promise((r) => setTimeout(r, 5));
    }
    const core = instantiateCore(memory);
    poke(core, hart);
    const result = (await next(NOTICE_MS)) as SpinResult;
    return { result, core, p };
  } finally {
    await worker.terminate();
  }
}

for (const [engine, jit] of [["interpreter", false], ["translated code", true]] as const) {
  for (const loop of ["self", "dispatch"] as const) {
    if (!jit && loop === "dispatch") continue; // the same loop to the interpreter

    test(`${engine} (${loop} loop): REQ_EXIT from another thread ends run() with EXIT_KICK, exactly`, async () => {
      const { result: r, core, p } = await spin(loop, jit, (c, h) => c.fn.postRequest(h, c.k.REQ_EXIT));
      assert.equal(r.reason, core.k.EXIT_KICK);
      assert.ok(r.t1 >= 1000n, `the kick came inside run(), after ${r.t1} iterations`);
      // Exact pc and count: the instructions of the loop retired so far.
      const into = Number(r.pc - p.loop) / 4;
      assert.ok(into >= 0 && into < p.perIteration, `pc ${r.pc.toString(16)} is in the loop`);
      const iterations = into === 0 ? Number(r.t1) : Number(r.t1) - 1;
      assert.equal(r.insns, p.prefix + iterations * p.perIteration + into);
      assert.equal(r.resumed, core.k.EXIT_BUDGET, "and the hart runs on after the kick");
    });

    test(`${engine} (${loop} loop): an interrupt line raised on another thread is taken`, async () => {
      const { result: r, core } = await spin(loop, jit, (c, h) => c.fn.setIrqLine(h, c.k.IRQ_LINE_MEIP, 1));
      assert.equal(r.reason, core.k.EXIT_HTIF, "the trap handler reported");
      assert.equal(r.mcause, MEI_CAUSE);
    });
  }
}
