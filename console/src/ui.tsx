// Pieces every page shares: loading, errors, empty states, lists with search
// and paging, dialogs, members and activity of a resource.
import type { ComponentChildren, JSX } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import {
  del,
  enc,
  get,
  may,
  Problem,
  put,
  ROLES,
  rank,
  type FeedEvent,
  type Kind,
  type Member,
  type Role,
} from './api';

export interface Loaded<T> {
  data: T | undefined;
  error: Problem | undefined;
  loading: boolean;
  reload: () => void;
}

/** Runs `load` now and whenever `deps` change; `every` ms polls it. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[], every?: number): Loaded<T> {
  const [state, setState] = useState<{ data?: T; error?: Problem; loading: boolean }>({ loading: true });
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (data) => live && setState({ data, loading: false }),
      (error) => live && setState({ error: asProblem(error), loading: false }),
    );
    return () => {
      live = false;
    };
  }, [...deps, tick]);
  useEffect(() => {
    if (!every) return;
    const t = setInterval(reload, every);
    return () => clearInterval(t);
  }, [every, reload]);
  return { ...state, reload } as Loaded<T>;
}

export function asProblem(e: unknown): Problem {
  return e instanceof Problem ? e : new Problem(0, 'client', String(e));
}

export function ErrorBox({ error }: { error?: Problem }) {
  if (!error) return null;
  return (
    <p class="error" role="alert">
      {error.detail}
      {error.code ? <span class="code"> ({error.code})</span> : null}
    </p>
  );
}

/** Loading, error and empty states around `children(data)`. */
export function Show<T>(props: {
  loaded: Loaded<T>;
  empty?: (d: T) => boolean;
  emptyText?: string;
  children: (d: T) => ComponentChildren;
}) {
  const { data, error, loading } = props.loaded;
  if (error) return <ErrorBox error={error} />;
  if (data === undefined) return loading ? <p class="loading" aria-busy="true">Loading…</p> : null;
  if (props.empty?.(data)) return <p class="empty">{props.emptyText ?? 'Nothing here yet.'}</p>;
  return <>{props.children(data)}</>;
}

/** A form's submit with busy state and the problem's detail on failure. */
export function useAction(): [boolean, Problem | undefined, (f: () => Promise<unknown>) => Promise<boolean>] {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Problem>();
  const run = async (f: () => Promise<unknown>) => {
    setBusy(true);
    setError(undefined);
    try {
      await f();
      return true;
    } catch (e) {
      setError(asProblem(e));
      return false;
    } finally {
      setBusy(false);
    }
  };
  return [busy, error, run];
}

/** A labelled control; the hint stays outside the label, so the label is the control's name. */
export function Field(props: { label: string; children: ComponentChildren; hint?: string }) {
  return (
    <div class="field">
      <label>
        <span>{props.label}</span>
        {props.children}
      </label>
      {props.hint ? <small>{props.hint}</small> : null}
    </div>
  );
}

export function Dialog(props: { title: string; onClose: () => void; children: ComponentChildren }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    ref.current?.showModal();
  }, []);
  return (
    <dialog ref={ref} aria-label={props.title} onClose={props.onClose} onCancel={props.onClose}>
      <h2>{props.title}</h2>
      {props.children}
    </dialog>
  );
}

const PAGE = 20;

/** Search (name and description) and paging over a list. */
export function Listing<T>(props: {
  items: T[];
  text: (t: T) => string;
  label: string;
  children: (page: T[]) => ComponentChildren;
}) {
  const [q, setQ] = useState('');
  const [page, setPage] = useState(0);
  const hits = props.items.filter((t) => props.text(t).toLowerCase().includes(q.toLowerCase()));
  const pages = Math.max(1, Math.ceil(hits.length / PAGE));
  const cur = Math.min(page, pages - 1);
  return (
    <div class="listing">
      <input
        type="search"
        aria-label={`Search ${props.label}`}
        placeholder={`Search ${props.label}`}
        value={q}
        onInput={(e) => {
          setQ(e.currentTarget.value);
          setPage(0);
        }}
      />
      {hits.length === 0 ? (
        <p class="empty">{q ? `No ${props.label} match “${q}”.` : `No ${props.label} yet.`}</p>
      ) : (
        props.children(hits.slice(cur * PAGE, cur * PAGE + PAGE))
      )}
      {pages > 1 ? (
        <nav class="pager" aria-label="pages">
          <button type="button" disabled={cur === 0} onClick={() => setPage(cur - 1)}>
            Previous
          </button>
          <span>
            page {cur + 1} of {pages}
          </span>
          <button type="button" disabled={cur >= pages - 1} onClick={() => setPage(cur + 1)}>
            Next
          </button>
        </nav>
      ) : null}
    </div>
  );
}

export function when(t?: string | null): string {
  if (!t) return '—';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? t : d.toISOString().replace('T', ' ').slice(0, 19) + 'Z';
}

export function age(t?: string | null): string {
  if (!t) return '—';
  const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

export function Tabs(props: { tabs: string[]; current: string; href: (t: string) => string }) {
  return (
    <nav class="tabs" aria-label="sections">
      {props.tabs.map((t) => (
        <a href={props.href(t)} aria-current={t === props.current ? 'page' : undefined}>
          {t}
        </a>
      ))}
    </nav>
  );
}

/** Members of a resource: who has which role; changes for `manage_members`. */
export function Members(props: { kind: Kind; base: string; role: Role | null; admin: boolean }) {
  const loaded = useLoad(() => get<Member[]>(`${props.base}/members`), [props.base]);
  const manage = may(props.kind, 'manage_members', props.role, props.admin);
  const own = rank(props.admin ? 'Owner' : props.role);
  const grantable = ROLES.filter((r) => rank(r) <= own);
  const [user, setUser] = useState('');
  const [role, setRole] = useState<Role>('Developer');
  const [busy, error, run] = useAction();
  const setMember = (u: string, r: Role) =>
    run(() => put(`${props.base}/members/${enc(u)}`, { role: r })).then((ok) => ok && loaded.reload());
  return (
    <section aria-label="members">
      <ErrorBox error={error} />
      <Show loaded={loaded} empty={(m) => m.length === 0} emptyText="No members.">
        {(members) => (
          <table>
            <thead>
              <tr>
                <th>User</th>
                <th>Role</th>
                <th>Added by</th>
                <th>Added</th>
                {manage ? <th>Change</th> : null}
              </tr>
            </thead>
            <tbody>
              {members.map((m) => (
                <tr data-member={m.user}>
                  <td>{m.user}</td>
                  <td>{m.role}</td>
                  <td>{m.added_by}</td>
                  <td>{when(m.added)}</td>
                  {manage ? (
                    <td class="row-actions">
                      <select
                        aria-label={`Role of ${m.user}`}
                        value={m.role}
                        disabled={busy}
                        onChange={(e) => setMember(m.user, e.currentTarget.value as Role)}
                      >
                        {grantable.map((r) => (
                          <option value={r}>{r}</option>
                        ))}
                      </select>
                      <button
                        type="button"
                        class="danger"
                        disabled={busy}
                        onClick={() =>
                          run(() => del(`${props.base}/members/${enc(m.user)}`)).then((ok) => ok && loaded.reload())
                        }
                      >
                        Remove {m.user}
                      </button>
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Show>
      {manage ? (
        <form
          class="inline"
          onSubmit={(e) => {
            e.preventDefault();
            setMember(user.trim(), role).then(() => setUser(''));
          }}
        >
          <Field label="User name">
            <input required value={user} onInput={(e) => setUser(e.currentTarget.value)} />
          </Field>
          <Field label="Role">
            <select value={role} onChange={(e) => setRole(e.currentTarget.value as Role)}>
              {grantable.map((r) => (
                <option value={r}>{r}</option>
              ))}
            </select>
          </Field>
          <button type="submit" disabled={busy}>
            Add member
          </button>
        </form>
      ) : null}
    </section>
  );
}

export function Activity(props: { base: string }) {
  const loaded = useLoad(() => get<FeedEvent[]>(`${props.base}/activity?limit=100`), [props.base]);
  return (
    <Show loaded={loaded} empty={(a) => a.length === 0} emptyText="No activity yet.">
      {(events) => (
        <ol class="feed" aria-label="activity">
          {events.map((e) => (
            <li>
              <time>{when(e.at)}</time> <strong>{e.actor}</strong> {e.action}{' '}
              {e.detail ? <code>{JSON.stringify(e.detail)}</code> : null}
            </li>
          ))}
        </ol>
      )}
    </Show>
  );
}

export function Badge(props: { children: ComponentChildren; tone?: 'ok' | 'warn' | 'bad' }) {
  return <span class={`badge ${props.tone ?? ''}`}>{props.children}</span>;
}

export type Input = JSX.TargetedEvent<HTMLInputElement, Event>;
