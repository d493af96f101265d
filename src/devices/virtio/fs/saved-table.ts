// The node and handle tables of a virtio-fs device in a snapshot, and how a
// restore opens them again. A node the guest holds is a host fd on an inode,
// which no snapshot can carry; what it keeps instead is the name the node
// was last found under in its parent (as virtiofsd's "find-paths" migration
// mode does). The restore looks each one up again under its parent, from the
// share's root down, and checks the type; each handle is the node opened
// again with its flags (no O_CREAT, O_EXCL or O_TRUNC this time). So the
// files the guest holds must still be where it found them: a node deleted
// or moved on the host refuses the snapshot (HostFs.exportTable's `lost`)
// or the restore (one line naming it), never a wrong file behind a node id.
// A snapshot is untrusted: names are single components (no "..", no "/"),
// looked up under their parent's fd without following a link, as every
// LOOKUP is, and a handle gets no flag OPEN would not have given it.
//
// Names are the raw bytes of a component as latin1 strings (host-fs.ts).

import * as fs from "node:fs";
import { O_PATH, MAX_NODES, MAX_HANDLES, NAME_MAX, S_IFDIR, S_IFLNK, S_IFREG, DIR_HANDLE_FLAGS, checkName, closeQuietly, dirEntries, pathUnder } from "./host-fs.js";
import { FuseError } from "./fuse.js";
import { SnapshotError, type StateReader } from "../../../snapshot/state.js";

const { O_NOFOLLOW, O_RDONLY, O_APPEND, O_NONBLOCK, O_NOCTTY } = fs.constants;
/** The access-mode bits of open flags (Linux; fs.constants lacks it). */
const O_ACCMODE = 3;
const S_IFMT = 0o170000;
/** File types a lookup can find (fifo, char, dir, block, file, link, socket). */
const TYPES = new Set([0o010000, 0o020000, S_IFDIR, 0o060000, S_IFREG, S_IFLNK, 0o140000]);
/** Node ids and handle ids stay exact doubles. */
const MAX_ID = Number.MAX_SAFE_INTEGER;

export interface SavedTable {
  /** Every node but the root (id 1). */
  nodes: { id: number; parent: number; name: string; type: number; nlookup: number }[];
  handles: { id: number; node: number; dir: boolean; flags: number }[];
  nextNode: number;
  nextHandle: number;
}

/** What HostFs.exportTable() gives: the tables, and the names of nodes no longer found by them. */
export interface ExportedTable {
  table: SavedTable;
  lost: string[];
}

export interface ReopenedTable {
  nodes: (SavedTable["nodes"][number] & { fd: number; key: string })[];
  handles: (SavedTable["handles"][number] & { fd: number; entries?: { name: string; type: number }[] })[];
  nextNode: number;
  nextHandle: number;
}

/** The saved tables, checked as untrusted input: SnapshotError naming the field otherwise. */
export function readSavedTable(r: StateReader): SavedTable {
  const typeOf = new Map<number, number>([[1, S_IFDIR]]);
  const nodes = r.array("nodes", MAX_NODES).map((n) => {
    const id = n.int("id", 2, MAX_ID);
    n.check(!typeOf.has(id), `node ${id} twice`);
    const name = n.str("name", NAME_MAX);
    try {
      checkName(name);
    } catch (e) {
      if (!(e instanceof FuseError)) throw e;
      n.check(false, `name ${JSON.stringify(name)} is no single component`);
    }
    const type = n.int("type", 0, S_IFMT);
    n.check(TYPES.has(type), `type 0o${type.toString(8)} is no file type`);
    typeOf.set(id, type);
    return { id, parent: n.int("parent", 1, MAX_ID), name, type, nlookup: n.int("nlookup", 1, MAX_ID) };
  });
  for (const n of nodes) r.check(typeOf.get(n.parent) === S_IFDIR, `node ${n.id}: its parent ${n.parent} is no directory node`);
  const handleIds = new Set<number>();
  const handles = r.array("handles", MAX_HANDLES).map((h) => {
    const id = h.int("id", 1, MAX_ID);
    h.check(!handleIds.has(id), `handle ${id} twice`);
    handleIds.add(id);
    const node = h.int("node", 1, MAX_ID);
    const dir = h.bool("dir");
    h.check(typeOf.get(node) === (dir ? S_IFDIR : S_IFREG), `handle ${id}: node ${node} is no ${dir ? "directory" : "regular file"} node`);
    return { id, node, dir, flags: h.int("flags", 0, 0x7fff_ffff) };
  });
  const nextNode = r.int("nextNode", 2, MAX_ID);
  const nextHandle = r.int("nextHandle", 1, MAX_ID);
  r.check(nodes.every((n) => n.id < nextNode) && handles.every((h) => h.id < nextHandle), "the next ids are below ids in use");
  return { nodes, handles, nextNode, nextHandle };
}

/**
 * Open every saved node again under its parent, from the root at `hostDir`
 * down, then every handle. The fds are the process's, so the server's
 * thread can take them over (HostFs.adopt). Throws SnapshotError naming the
 * first node not found (or found as another type) or handle not opened;
 * then nothing stays open.
 */
export function reopenTable(hostDir: string, readOnly: boolean, table: SavedTable, tag: string): ReopenedTable {
  const opened: number[] = [];
  const open = (path: string | Buffer, flags: number) => {
    const fd = fs.openSync(path, flags);
    opened.push(fd);
    return fd;
  };
  try {
    const rootFd = open(hostDir, O_PATH | fs.constants.O_DIRECTORY);
    const rootSt = fs.fstatSync(rootFd, { bigint: true });
    const fdOf = new Map<number, number>([[1, rootFd]]);
    const pathOf = new Map<number, string>([[1, ""]]);
    const keys = new Set([`${rootSt.dev}:${rootSt.ino}`]);
    const nodes: ReopenedTable["nodes"] = [];
    // From the root down, breadth first (a node renamed into a directory found later has a larger parent id than its own).
    const children = new Map<number, SavedTable["nodes"]>();
    for (const n of table.nodes) {
      const siblings = children.get(n.parent);
      if (siblings) siblings.push(n);
      else children.set(n.parent, [n]);
    }
    for (let at = [1]; at.length > 0; ) {
      const next: number[] = [];
      for (const parentId of at) {
        const parentFd = fdOf.get(parentId)!;
        for (const n of children.get(parentId) ?? []) {
          const path = `${pathOf.get(parentId)}/${n.name}`;
          let fd: number;
          try {
            fd = open(pathUnder(parentFd, n.name), O_PATH | O_NOFOLLOW);
          } catch (e) {
            throw new SnapshotError(`virtio-fs ${tag}: ${hostDir}${path}, which the guest holds, cannot be opened again (${why(e)})`);
          }
          const st = fs.fstatSync(fd, { bigint: true });
          const key = `${st.dev}:${st.ino}`;
          if ((Number(st.mode) & S_IFMT) !== n.type) throw new SnapshotError(`virtio-fs ${tag}: ${hostDir}${path}, which the guest holds, is another kind of file now`);
          if (keys.has(key)) throw new SnapshotError(`virtio-fs ${tag}: ${hostDir}${path} is a file another node of the guest names too`);
          keys.add(key);
          fdOf.set(n.id, fd);
          pathOf.set(n.id, path);
          nodes.push({ ...n, fd, key });
          next.push(n.id);
        }
      }
      at = next;
    }
    if (nodes.length < table.nodes.length) {
      const stray = table.nodes.find((n) => !fdOf.has(n.id))!;
      throw new SnapshotError(`virtio-fs ${tag}: node ${stray.id}'s parent ${stray.parent} is not in the table (or the parents form a loop)`);
    }
    const handles = table.handles.map((h) => {
      const nodeFd = fdOf.get(h.node)!;
      const path = `${hostDir}${pathOf.get(h.node)}`;
      // Only what OPEN and CREATE ever use (host-fs.ts hostOpenFlags): an access mode, append, no waiting, no terminal.
      const flags = h.dir ? DIR_HANDLE_FLAGS : h.flags & (O_ACCMODE | O_APPEND | O_NONBLOCK | O_NOCTTY);
      if (readOnly && !h.dir && (flags & O_ACCMODE) !== O_RDONLY) throw new SnapshotError(`virtio-fs ${tag}: the guest holds ${path} open for writing, and the share is read-only now`);
      try {
        const fd = open(`/proc/self/fd/${nodeFd}`, flags);
        return { ...h, flags, fd, ...(h.dir ? { entries: dirEntries(nodeFd) } : {}) };
      } catch (e) {
        throw new SnapshotError(`virtio-fs ${tag}: ${path}, which the guest has open, cannot be opened again (${why(e)})`);
      }
    });
    // The root's fd was ours only to find the rest from.
    fs.closeSync(rootFd);
    opened.splice(opened.indexOf(rootFd), 1);
    return { nodes, handles, nextNode: table.nextNode, nextHandle: table.nextHandle };
  } catch (e) {
    opened.forEach(closeQuietly);
    throw e;
  }
}

/** Why a host call failed, in a word where there is one (ENOENT, EACCES...). */
function why(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
}

/** Close what reopenTable opened (a restore that fails after it). */
export function closeReopened(t: ReopenedTable): void {
  for (const x of [...t.nodes, ...t.handles]) closeQuietly(x.fd);
}
