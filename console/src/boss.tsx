// Boss: what administrators watch and change — users and quotas, Cells,
// daily counts, nginx groups and their domains.
import { useState } from 'preact/hooks';
import {
  call,
  enc,
  get,
  post,
  put,
  type AgentStatus,
  type Cell,
  type DayStats,
  type DomainError,
  type DomainStatus,
  type DomainView,
  type User,
} from './api';
import { age, Badge, Dialog, ErrorBox, Field, Listing, Show, useAction, useLoad, when } from './ui';

// ---------------------------------------------------------------- users

export function UsersPage() {
  const loaded = useLoad(() => get<User[]>('/api/v1/users'), []);
  const [editing, setEditing] = useState<User>();
  return (
    <section>
      <h1>Users and quotas</h1>
      <NewUser onDone={loaded.reload} />
      {editing ? (
        <QuotaDialog
          user={editing}
          onClose={() => setEditing(undefined)}
          onDone={() => {
            setEditing(undefined);
            loaded.reload();
          }}
        />
      ) : null}
      <Show loaded={loaded}>
        {(users) => (
          <Listing items={users} label="users" text={(u) => u.name}>
            {(page) => (
              <table aria-label="users">
                <thead>
                  <tr>
                    <th>User</th>
                    <th>Apps</th>
                    <th>Containers</th>
                    <th>CPU (millicores)</th>
                    <th>Memory</th>
                    <th>Created</th>
                    <th />
                  </tr>
                </thead>
                <tbody>
                  {page.map((u) => (
                    <tr data-user={u.name}>
                      <td>
                        {u.name} {u.admin ? <Badge>admin</Badge> : null}
                      </td>
                      <td>
                        {u.usage.apps ?? 0} / {u.quota.max_apps}
                      </td>
                      <td>
                        {u.usage.containers ?? 0} / {u.quota.max_containers}
                      </td>
                      <td>
                        {u.usage.cpu_millis ?? 0} / {u.quota.max_cpu_millis ?? 'default'}
                      </td>
                      <td>
                        {bytes(u.usage.memory_bytes ?? 0)} / {u.quota.max_memory_bytes == null ? 'default' : bytes(u.quota.max_memory_bytes)}
                      </td>
                      <td>{when(u.created)}</td>
                      <td>
                        <button type="button" onClick={() => setEditing(u)}>
                          Quota of {u.name}
                        </button>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </Listing>
        )}
      </Show>
    </section>
  );
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${Math.round(n * 10) / 10} ${units[i]}`;
}

function NewUser({ onDone }: { onDone: () => void }) {
  const [name, setName] = useState('');
  const [password, setPassword] = useState('');
  const [admin, setAdmin] = useState(false);
  const [busy, error, run] = useAction();
  return (
    <form
      class="inline"
      onSubmit={(e) => {
        e.preventDefault();
        run(() => post('/api/v1/users', { name: name.trim(), password, admin })).then((ok) => {
          if (!ok) return;
          setName('');
          setPassword('');
          onDone();
        });
      }}
    >
      <Field label="New user name">
        <input required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </Field>
      <Field label="Initial password" hint="8 characters or more">
        <input required type="password" autocomplete="new-password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
      </Field>
      <label class="check">
        <input type="checkbox" checked={admin} onChange={(e) => setAdmin(e.currentTarget.checked)} /> administrator
      </label>
      <button type="submit" disabled={busy}>
        Create user
      </button>
      <ErrorBox error={error} />
    </form>
  );
}

function QuotaDialog({ user, onClose, onDone }: { user: User; onClose: () => void; onDone: () => void }) {
  const q = user.quota;
  const [f, setF] = useState({
    apps: String(q.max_apps),
    containers: String(q.max_containers),
    cpu: q.max_cpu_millis == null ? '' : String(q.max_cpu_millis),
    mem: q.max_memory_bytes == null ? '' : String(q.max_memory_bytes),
  });
  const [busy, error, run] = useAction();
  const set = (k: keyof typeof f) => (e: { currentTarget: HTMLInputElement }) => setF({ ...f, [k]: e.currentTarget.value });
  return (
    <Dialog title={`Quota of ${user.name}`} onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          const body = {
            max_apps: Number(f.apps),
            max_containers: Number(f.containers),
            max_cpu_millis: f.cpu.trim() ? Number(f.cpu) : null,
            max_memory_bytes: f.mem.trim() ? Number(f.mem) : null,
          };
          run(() => put(`/api/v1/users/${enc(user.name)}/quota`, body)).then((ok) => ok && onDone());
        }}
      >
        <Field label="Apps">
          <input required type="number" min={0} value={f.apps} onInput={set('apps')} />
        </Field>
        <Field label="Containers">
          <input required type="number" min={0} value={f.containers} onInput={set('containers')} />
        </Field>
        <Field label="CPU (millicores)" hint="empty: the default">
          <input type="number" min={0} value={f.cpu} onInput={set('cpu')} />
        </Field>
        <Field label="Memory (bytes)" hint="empty: the default">
          <input type="number" min={0} value={f.mem} onInput={set('mem')} />
        </Field>
        <ErrorBox error={error} />
        <div class="buttons">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" disabled={busy}>
            Save quota
          </button>
        </div>
      </form>
    </Dialog>
  );
}

// ---------------------------------------------------------------- daily counts

const METRICS = ['deploys', 'builds', 'pushes', 'scalings', 'deletions'] as const;

function isoDay(d: Date): string {
  return d.toISOString().slice(0, 10);
}

export function StatsPage() {
  const today = new Date();
  const [from, setFrom] = useState(isoDay(new Date(today.getTime() - 6 * 86400000)));
  const [to, setTo] = useState(isoDay(today));
  const loaded = useLoad(
    () => get<{ days: DayStats[] }>(`/api/v1/admin/stats?from=${enc(from)}&to=${enc(to)}`),
    [from, to],
  );
  return (
    <section>
      <h1>Daily operations</h1>
      <form class="inline" onSubmit={(e) => e.preventDefault()}>
        <Field label="From">
          <input type="date" value={from} onChange={(e) => setFrom(e.currentTarget.value)} />
        </Field>
        <Field label="To">
          <input type="date" value={to} onChange={(e) => setTo(e.currentTarget.value)} />
        </Field>
      </form>
      <Show loaded={loaded}>
        {(s) => (
          <>
            <Chart days={s.days} />
            <table aria-label="daily counts">
              <thead>
                <tr>
                  <th>Day (UTC)</th>
                  {METRICS.map((m) => (
                    <th>{m}</th>
                  ))}
                </tr>
              </thead>
              <tbody>
                {s.days.map((d) => (
                  <tr data-day={d.day}>
                    <td>{d.day}</td>
                    {METRICS.map((m) => (
                      <td data-metric={m}>{d[m]}</td>
                    ))}
                  </tr>
                ))}
              </tbody>
            </table>
          </>
        )}
      </Show>
    </section>
  );
}

/** Grouped bars per day, drawn as SVG (no chart library, no outside request). */
function Chart({ days }: { days: DayStats[] }) {
  const max = Math.max(1, ...days.flatMap((d) => METRICS.map((m) => d[m])));
  const groupW = 60;
  const barW = 10;
  const h = 160;
  const w = Math.max(300, days.length * groupW + 40);
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${w} ${h + 40}`} role="img" aria-label="daily counts chart">
        <line x1="30" y1={h} x2={w} y2={h} class="axis" />
        <text x="0" y="12" class="tick">
          {max}
        </text>
        <text x="0" y={h} class="tick">
          0
        </text>
        {days.map((d, i) => (
          <g transform={`translate(${40 + i * groupW},0)`}>
            {METRICS.map((m, j) => {
              const bh = (d[m] / max) * (h - 10);
              return (
                <rect class={`bar m-${m}`} x={j * barW} y={h - bh} width={barW - 2} height={bh}>
                  <title>
                    {d.day} {m}: {d[m]}
                  </title>
                </rect>
              );
            })}
            <text x="0" y={h + 16} class="tick">
              {d.day.slice(5)}
            </text>
          </g>
        ))}
      </svg>
      <figcaption class="legend">
        {METRICS.map((m) => (
          <span class={`key m-${m}`}>{m}</span>
        ))}
      </figcaption>
    </figure>
  );
}

// ---------------------------------------------------------------- Cells

export function CellsPage() {
  const loaded = useLoad(() => get<Cell[]>('/api/v1/admin/cells'), []);
  return (
    <section>
      <h1>Cells</h1>
      <Show loaded={loaded} empty={(c) => c.length === 0} emptyText="No Cells registered: apps are kept as records only.">
        {(cells) => (
          <table aria-label="cells">
            <thead>
              <tr>
                <th>Cell</th>
                <th>State</th>
                <th>Apps</th>
                <th>Apiserver</th>
                <th>IPAM etcd</th>
                <th>Nginx groups</th>
                <th>Registered</th>
              </tr>
            </thead>
            <tbody>
              {cells.map((c) => (
                <tr data-cell={c.name}>
                  <td>{c.name}</td>
                  <td>
                    <Badge tone={c.state === 'active' ? 'ok' : 'warn'}>{c.state}</Badge>
                  </td>
                  <td>{c.apps}</td>
                  <td>
                    <code>{c.api_url}</code>
                  </td>
                  <td>{(c.etcd ?? []).join(', ') || '—'}</td>
                  <td>{(c.nginx_groups ?? []).join(', ') || '—'}</td>
                  <td>{when(c.created)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Show>
      {(loaded.data ?? []).map((c) => (
        <>
          <CellNodes cell={c.name} />
          <CellPools cell={c.name} />
        </>
      ))}
    </section>
  );
}

interface NodeUsage {
  name: string;
  ready: boolean;
  cpu_allocatable_millis: number;
  cpu_requested_millis: number;
  memory_allocatable_bytes: number;
  memory_requested_bytes: number;
  pods: number;
}

/** Requested vs allocatable, as the scheduler counts it. */
function Usage({ used, of, show }: { used: number; of: number; show: (n: number) => string }) {
  const pct = of ? Math.round((used / of) * 100) : 0;
  return (
    <span class="usage">
      <meter min={0} max={of || 1} value={used} aria-label={`${pct}%`} /> {show(used)} / {show(of)} ({pct}%)
    </span>
  );
}

function CellNodes({ cell }: { cell: string }) {
  const loaded = useLoad(() => get<NodeUsage[]>(`/api/v1/admin/cells/${enc(cell)}/nodes`), [cell], 10000);
  return (
    <section aria-label={`nodes of ${cell}`}>
      <h2>Nodes of {cell}</h2>
      <Show loaded={loaded} empty={(n) => n.length === 0} emptyText="No nodes.">
        {(nodes) => (
          <table aria-label={`nodes of ${cell}`}>
            <thead>
              <tr>
                <th>Node</th>
                <th>Status</th>
                <th>CPU requested / allocatable</th>
                <th>Memory requested / allocatable</th>
                <th>Pods</th>
              </tr>
            </thead>
            <tbody>
              {nodes.map((n) => (
                <tr data-node={n.name}>
                  <td>{n.name}</td>
                  <td>
                    <Badge tone={n.ready ? 'ok' : 'bad'}>{n.ready ? 'Ready' : 'not ready'}</Badge>
                  </td>
                  <td>
                    <Usage used={n.cpu_requested_millis} of={n.cpu_allocatable_millis} show={(m) => `${m}m`} />
                  </td>
                  <td>
                    <Usage used={n.memory_requested_bytes} of={n.memory_allocatable_bytes} show={bytes} />
                  </td>
                  <td>{n.pods}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Show>
    </section>
  );
}

interface PoolView {
  name: string;
  cidr: string;
  gateway: string;
  vlan: number;
  ips_assignable: number;
  ips_used: number;
  ips_reserved: number;
  ips_free: number;
  blocks_claimed: number;
  blocks_total: number;
  apps: string[];
}

/** The Cell's IP pools, from its IPAM (as `cnictl pool list` shows them). */
function CellPools({ cell }: { cell: string }) {
  const loaded = useLoad(() => get<PoolView[]>(`/api/v1/admin/cells/${enc(cell)}/pools`), [cell], 10000);
  return (
    <section aria-label={`IP pools of ${cell}`}>
      <h2>IP pools of {cell}</h2>
      <Show loaded={loaded} empty={(p) => p.length === 0} emptyText="No IP pools in this Cell's IPAM.">
        {(pools) => (
          <table aria-label={`IP pools of ${cell}`}>
            <thead>
              <tr>
                <th>Pool</th>
                <th>Range</th>
                <th>VLAN</th>
                <th>Addresses used / assignable</th>
                <th>Reserved</th>
                <th>Free</th>
                <th>Blocks claimed / total</th>
                <th>Apps</th>
              </tr>
            </thead>
            <tbody>
              {pools.map((p) => (
                <tr data-pool={p.name}>
                  <td>{p.name}</td>
                  <td>
                    <code>{p.cidr}</code> via <code>{p.gateway}</code>
                  </td>
                  <td>{p.vlan}</td>
                  <td>
                    <Usage used={p.ips_used} of={p.ips_assignable} show={String} />
                  </td>
                  <td>{p.ips_reserved}</td>
                  <td>{p.ips_free}</td>
                  <td>
                    {p.blocks_claimed} / {p.blocks_total}
                  </td>
                  <td>{p.apps.join(', ') || 'shared'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Show>
    </section>
  );
}

// ---------------------------------------------------------------- nginx groups

export function NginxPage({ group }: { group: string }) {
  const cells = useLoad(() => get<Cell[]>('/api/v1/admin/cells'), []);
  const [other, setOther] = useState('');
  const groups = [...new Set((cells.data ?? []).flatMap((c) => c.nginx_groups ?? []))];
  return (
    <section>
      <h1>Nginx groups</h1>
      <nav class="tabs" aria-label="nginx groups">
        {groups.map((g) => (
          <a href={`#/nginx/${enc(g)}`} aria-current={g === group ? 'page' : undefined}>
            {g}
          </a>
        ))}
      </nav>
      <form
        class="inline"
        onSubmit={(e) => {
          e.preventDefault();
          location.hash = `#/nginx/${enc(other.trim())}`;
        }}
      >
        <Field label="Open group">
          <input required value={other} onInput={(e) => setOther(e.currentTarget.value)} />
        </Field>
        <button type="submit">Open</button>
      </form>
      <ErrorBox error={cells.error} />
      {group ? <Group group={group} /> : <p class="empty">Choose a group.</p>}
    </section>
  );
}

function Group({ group }: { group: string }) {
  const agents = useLoad(() => get<AgentStatus[]>(`/api/v1/slb/groups/${enc(group)}/agents`), [group], 5000);
  const domains = useLoad(() => get<DomainView[]>(`/api/v1/slb/groups/${enc(group)}/domains`), [group]);
  const [editing, setEditing] = useState<string>();
  return (
    <>
      <h2>Agents of {group}</h2>
      <Show loaded={agents} empty={(a) => a.length === 0} emptyText="No agent reports for this group.">
        {(list) => (
          <table aria-label="agents">
            <thead>
              <tr>
                <th>Host</th>
                <th>Applied revision</th>
                <th>Reloads</th>
                <th>Last reload</th>
                <th>Reported</th>
                <th>Errors</th>
              </tr>
            </thead>
            <tbody>
              {list.map((a) => (
                <tr data-host={a.host}>
                  <td>{a.host}</td>
                  <td>{a.appliedRevision}</td>
                  <td>{a.reloads}</td>
                  <td>{when(a.lastReload)}</td>
                  <td>{age(a.updated)} ago</td>
                  <td>
                    {a.error || (a.errors && Object.keys(a.errors).length) ? (
                      <pre class="error">
                        {[a.error, ...Object.entries(a.errors ?? {}).map(([d, e]) => `${d}: ${domainError(e)}`)].filter(Boolean).join('\n')}
                      </pre>
                    ) : (
                      <Badge tone="ok">ok</Badge>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Show>
      <h2>Domains</h2>
      <Show loaded={domains} empty={(d) => d.length === 0} emptyText="No domains in this group.">
        {(list) => (
          <ul class="domains">
            {list.map((d) => (
              <li>
                {d.domain} (config r{d.configRevision}){' '}
                <button type="button" onClick={() => setEditing(d.domain)}>
                  Edit {d.domain}
                </button>
              </li>
            ))}
          </ul>
        )}
      </Show>
      {editing ? <DomainEditor group={group} domain={editing} onClose={() => setEditing(undefined)} /> : null}
    </>
  );
}

/** An agent's refusal as nginx worded it, after what refused it (`nginx-test: …`). */
function domainError(e: DomainError): string {
  return `${e.kind}: ${e.message} (config r${e.revision})`;
}

/** The admin-only domain config editor: JSON, saved with If-Match; agents' `nginx -t` errors below. */
function DomainEditor({ group, domain, onClose }: { group: string; domain: string; onClose: () => void }) {
  const base = `/api/v1/slb/groups/${enc(group)}/domains/${enc(domain)}`;
  const view = useLoad(() => get<DomainView>(base), [base]);
  const status = useLoad(() => get<DomainStatus>(`${base}/status`), [base], 3000);
  const [text, setText] = useState<string>();
  const [busy, error, run] = useAction();
  const shown = text ?? (view.data ? JSON.stringify(view.data.config, null, 2) : '');
  return (
    <Dialog title={`Domain ${domain}`} onClose={onClose}>
      <Show loaded={view}>
        {(v) => (
          <form
            onSubmit={(e) => {
              e.preventDefault();
              run(async () => {
                let config: unknown;
                try {
                  config = JSON.parse(shown);
                } catch (err) {
                  throw new Error(`not JSON: ${String(err)}`);
                }
                await call('PUT', base, { body: config, headers: { 'If-Match': `"${v.configRevision}"` } });
                setText(undefined);
                view.reload();
                status.reload();
              });
            }}
          >
            <Field label="Domain configuration (JSON)" hint={`revision ${v.configRevision}`}>
              <textarea rows={14} spellcheck={false} value={shown} onInput={(e) => setText(e.currentTarget.value)} />
            </Field>
            <ErrorBox error={error} />
            <div class="buttons">
              <button type="button" onClick={onClose}>
                Close
              </button>
              <button type="submit" disabled={busy}>
                Save configuration
              </button>
            </div>
          </form>
        )}
      </Show>
      <h3>Agents</h3>
      <Show loaded={status} empty={(s) => s.agents.length === 0} emptyText="No agent has reported.">
        {(s) => (
          <ul aria-label="domain status">
            {s.agents.map((a) => (
              <li data-host={a.host}>
                {a.host}: <Badge tone={a.inSync ? 'ok' : 'warn'}>{a.inSync ? 'in sync' : `at r${a.appliedRevision}`}</Badge>
                {a.error ? <pre class="error">{domainError(a.error)}</pre> : null}
              </li>
            ))}
          </ul>
        )}
      </Show>
    </Dialog>
  );
}
