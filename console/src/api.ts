// The core's JSON API (docs/core-api.md). The session token lives only in
// this module's memory: it is sent as an Authorization header, never as a
// cookie, so no other site can make the browser send it (no CSRF), and it
// is gone when the tab is closed or reloaded.

export type Role = 'Guest' | 'Reporter' | 'Developer' | 'Master' | 'Owner';
export const ROLES: Role[] = ['Guest', 'Reporter', 'Developer', 'Master', 'Owner'];
export type Kind = 'app' | 'image' | 'group' | 'build';

/** A problem JSON answer (RFC 7807), or a network failure. */
export class Problem extends Error {
  constructor(
    public status: number,
    public code: string,
    public detail: string,
  ) {
    super(detail);
  }
}

let token: string | null = null;
let onSignedOut: () => void = () => {};

export function setToken(t: string | null) {
  token = t;
}
export function signedIn(): boolean {
  return token !== null;
}
export function whenSignedOut(f: () => void) {
  onSignedOut = f;
}

export interface Req {
  body?: unknown;
  headers?: Record<string, string>;
  text?: boolean;
}

export async function call<T>(method: string, path: string, req: Req = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json', ...req.headers };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (req.body !== undefined) headers['Content-Type'] = 'application/json';
  let resp: Response;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: req.body === undefined ? undefined : JSON.stringify(req.body),
      credentials: 'omit',
    });
  } catch (e) {
    throw new Problem(0, 'network', `the core could not be reached: ${String(e)}`);
  }
  if (!resp.ok) {
    const p = await resp.json().catch(() => null);
    if (resp.status === 401 && token) {
      token = null;
      onSignedOut();
    }
    throw new Problem(
      resp.status,
      p?.code ?? 'http_error',
      p?.detail ?? `${resp.status} ${resp.statusText}`,
    );
  }
  if (resp.status === 204) return undefined as T;
  if (req.text) return (await resp.text()) as T;
  return (await resp.json()) as T;
}

export const get = <T>(path: string) => call<T>('GET', path);
export const post = <T>(path: string, body?: unknown) => call<T>('POST', path, { body: body ?? {} });
export const put = <T>(path: string, body: unknown) => call<T>('PUT', path, { body });
export const patch = <T>(path: string, body: unknown) => call<T>('PATCH', path, { body });
export const del = (path: string) => call<void>('DELETE', path);

export const enc = encodeURIComponent;

// ---- shapes (the OpenAPI document's schemas, the fields the pages use) ----

export interface Quota {
  max_apps: number;
  max_containers: number;
  max_cpu_millis?: number | null;
  max_memory_bytes?: number | null;
}
export interface Usage {
  apps?: number;
  containers?: number;
  cpu_millis?: number;
  memory_bytes?: number;
}
export interface User {
  name: string;
  admin: boolean;
  created: string;
  quota: Quota;
  usage: Usage;
}
export interface Resource {
  name: string;
  creator: string;
  public: boolean;
  description: string;
  created: string;
  role: Role | null;
}
export interface AppState {
  version: number;
  image?: string | null;
  tag?: string | null;
  replicas: number;
}
export interface Lb {
  domain: string;
  group: string;
}
export interface AppSpec {
  name: string;
  uid: string;
  namespace: string;
  image?: string | null;
  cells: string[];
  lb?: Lb | null;
  port: number;
}
/** What the user configures in DNS for the app's domain (the nginx group's record, set by admins). */
export interface LbDns {
  domain: string;
  group: string;
  cname: string | null;
  vips: string[];
}

/** `PUT /apps/{name}/autoscale`: bounds per Cell and per-pod targets. */
export interface AutoscalePolicy {
  min: number;
  max: number;
  targets: { cpu_percent?: number; memory_percent?: number; requests_per_second?: number; disk_bytes_per_second?: number };
  window_seconds?: number;
  scale_up_stabilization_seconds?: number;
  scale_down_stabilization_seconds?: number;
  tolerance_percent?: number;
}
export interface AutoscaleReading {
  metric: string;
  value: number;
  target: number;
}
export interface AutoscaleCell {
  current: number;
  ready: number;
  recommended?: number;
  desired: number;
  readings: AutoscaleReading[];
  frozen?: string;
  last_scale?: { at: string; from: number; to: number; reading?: AutoscaleReading };
}
/** `GET /apps/{name}/autoscale`. */
export interface Autoscale {
  policy: AutoscalePolicy;
  by: string;
  at: string;
  status: { version: number; at?: string; cells: Record<string, AutoscaleCell> } | null;
}

/** `GET /apps/{name}/ip-ranges`: the app's bound IP ranges in one Cell. */
export interface CellRanges {
  cell: string;
  binding: { pools: string[]; shared_fallback: boolean; reserve_secs: number } | null;
  ranges: {
    cell: string;
    pool: string;
    cidr: string;
    gateway: string;
    vlan: number;
    shared_with: string[];
    ips_assignable: number;
    ips_used: number;
    ips_reserved: number;
    ips_free: number;
  }[];
  reserved: number;
}

export interface App extends Resource {
  state: AppState;
  desired?: AppSpec | null;
  dns?: LbDns | null;
}
export interface Placement {
  cell: string;
  desired: number;
  ready: number;
  applied: boolean;
}
export interface VersionView {
  version: number;
  image: string | null;
  tag: string;
  replicas: number;
  by: string;
  at: string;
  placement: Placement[];
}
export type VersionFields = Record<string, unknown> & { image?: string | null; tag: string; replicas?: number };
export interface Container {
  pod: string;
  version?: number | null;
  cell: string;
  node?: string | null;
  ip?: string | null;
  phase?: string | null;
  ready: boolean;
  restarts: number;
  started?: string | null;
}
export interface KubeEvent {
  cell: string;
  type?: string | null;
  reason?: string | null;
  message?: string | null;
  object?: string | null;
  count: number;
  last?: string | null;
}
export interface Member {
  user: string;
  role: Role;
  added_by: string;
  added: string;
}
export interface FeedEvent {
  id: string;
  at: string;
  actor: string;
  action: string;
  detail?: unknown;
}
export interface PermissionRow {
  kind: Kind;
  action: string;
  description?: string;
  min_role: Role;
  roles: Role[];
  public_non_member: boolean;
  public_anonymous: boolean;
}
export interface DayStats {
  day: string;
  deploys: number;
  builds: number;
  pushes: number;
  scalings: number;
  deletions: number;
}
export interface BuildConfig {
  id: string;
  repo: string;
  branch: string;
  image: string;
  public?: boolean;
  role?: Role | null;
  webhookPath?: string;
  webhookToken?: string;
  creator?: string;
  [k: string]: unknown;
}
export interface StageTiming {
  stage: string;
  startedAt: string;
  endedAt?: string | null;
  durationMs?: number | null;
  ok?: boolean | null;
}
export interface BuildRun {
  id: string;
  config: string;
  builder: string;
  attempt: number;
  trigger: { kind: string; user?: string | null };
  status: string;
  requestedTag?: string | null;
  commit?: string | null;
  image?: string | null;
  failedStage?: string | null;
  error?: string | null;
  stages: StageTiming[];
  log: string;
  logTruncatedBytes?: number;
  createdAt: string;
  finishedAt?: string | null;
}
export interface Cell {
  name: string;
  kubeconfig: string;
  api_url: string;
  etcd?: string[];
  nginx_groups?: string[];
  state: string;
  apps: number;
  created: string;
}
/** Why an agent does not serve a domain's latest config (lib/slb's DomainError). */
export interface DomainError {
  revision: number;
  /** invalid, invalid-upstream, nginx-test, reload, shared-dict-full */
  kind: string;
  message: string;
}
export interface AgentStatus {
  host: string;
  appliedRevision: number;
  errors?: Record<string, DomainError>;
  error?: string;
  domains?: string[];
  reloads: number;
  lastReload?: string;
  updated: string;
}
export interface DomainView {
  group: string;
  domain: string;
  config: unknown;
  upstream: unknown;
  configRevision: number;
  upstreamRevision: number;
}
export interface DomainStatus {
  domain: string;
  configRevision: number;
  upstreamRevision: number;
  agents: { host: string; appliedRevision: number; inSync: boolean; error?: DomainError; updated: string }[];
}

// ---- roles: the server's own table decides what the UI offers ----

let table: PermissionRow[] = [];
export async function loadPermissions(): Promise<PermissionRow[]> {
  table = await get<PermissionRow[]>('/api/v1/permissions');
  return table;
}

export function rank(r: Role | null | undefined): number {
  return r ? ROLES.indexOf(r) : -1;
}

/** May `role` do `action` on a `kind`? Admins act as Owner. */
export function may(kind: Kind, action: string, role: Role | null | undefined, admin = false): boolean {
  const row = table.find((r) => r.kind === kind && r.action === action);
  if (!row) return false;
  return rank(admin ? 'Owner' : role) >= rank(row.min_role);
}
