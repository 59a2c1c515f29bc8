// Entry: sign-in, then the console (at /) or boss (at /boss). Pages are
// addressed by the hash (`/#/apps/web/members`), so the core serves one
// file for every page; moving between console and boss keeps the page
// (and with it the in-memory session) loaded.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import './style.css';
import { get, loadPermissions, post, setToken, whenSignedOut, type User } from './api';
import { CellsPage, NginxPage, StatsPage, UsersPage } from './boss';
import {
  AppPage,
  AppsPage,
  BuildPage,
  BuildsPage,
  GroupPage,
  GroupsPage,
  ImagePage,
  ImagesPage,
  PermissionsPage,
} from './console';
import { ErrorBox, Field, useAction } from './ui';

function useLocation(): [string, string[]] {
  const read = (): [string, string[]] => [
    location.pathname.startsWith('/boss') ? 'boss' : 'console',
    location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent),
  ];
  const [loc, setLoc] = useState(read);
  useEffect(() => {
    const on = () => setLoc(read());
    addEventListener('hashchange', on);
    addEventListener('popstate', on);
    return () => {
      removeEventListener('hashchange', on);
      removeEventListener('popstate', on);
    };
  }, []);
  return loc;
}

/** Switch UIs without reloading (a reload would drop the session). */
function go(path: string, hash: string) {
  history.pushState(null, '', `${path}${hash}`);
  dispatchEvent(new PopStateEvent('popstate'));
}

function SignIn({ onIn, boss }: { onIn: (u: User) => void; boss: boolean }) {
  const [user, setUser] = useState('');
  const [password, setPassword] = useState('');
  const [busy, error, run] = useAction();
  return (
    <main class="signin">
      <h1>LeEngine {boss ? 'boss' : 'console'}</h1>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          run(async () => {
            const s = await post<{ token: string }>('/api/v1/login', { user: user.trim(), password });
            setToken(s.token);
            await loadPermissions();
            onIn(await get<User>('/api/v1/user'));
          });
        }}
      >
        <Field label="User name">
          <input required autocomplete="username" value={user} onInput={(e) => setUser(e.currentTarget.value)} />
        </Field>
        <Field label="Password">
          <input
            required
            type="password"
            autocomplete="current-password"
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </Field>
        <ErrorBox error={error} />
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
    </main>
  );
}

const CONSOLE_NAV: [string, string][] = [
  ['apps', 'Apps'],
  ['images', 'Images'],
  ['groups', 'Image groups'],
  ['builds', 'Builds'],
  ['permissions', 'Permissions'],
];
const BOSS_NAV: [string, string][] = [
  ['users', 'Users'],
  ['stats', 'Daily counts'],
  ['cells', 'Cells'],
  ['nginx', 'Nginx groups'],
];

function App() {
  const [me, setMe] = useState<User>();
  const [ui, parts] = useLocation();
  useEffect(() => whenSignedOut(() => setMe(undefined)), []);
  const boss = ui === 'boss';
  if (!me) return <SignIn boss={boss} onIn={setMe} />;
  const nav = boss ? BOSS_NAV : CONSOLE_NAV;
  const [section = nav[0][0], a = '', b = '', c = ''] = parts;
  return (
    <>
      <header class="top">
        <a class="brand" href="#/">
          LeEngine {boss ? 'boss' : 'console'}
        </a>
        <nav aria-label="main">
          {nav.map(([k, label]) => (
            <a href={`#/${k}`} aria-current={section === k ? 'page' : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <span class="me">
          {me.admin ? (
            <button type="button" class="link" onClick={() => go(boss ? '/' : '/boss', boss ? '#/apps' : '#/users')}>
              {boss ? 'Console' : 'Boss'}
            </button>
          ) : null}
          <span>{me.name}</span>
          <button
            type="button"
            class="link"
            onClick={() => {
              setToken(null);
              setMe(undefined);
            }}
          >
            Sign out
          </button>
        </span>
      </header>
      <main>{boss ? <BossPage me={me} section={section} a={a} /> : <ConsolePage me={me} parts={[section, a, b, c]} />}</main>
    </>
  );
}

function ConsolePage({ me, parts }: { me: User; parts: string[] }) {
  const [section, a, b, c] = parts;
  switch (section) {
    case 'images':
      return a && b ? <ImagePage me={me} name={`${a}/${b}`} tab={c} /> : <ImagesPage />;
    case 'groups':
      return a ? <GroupPage me={me} name={a} tab={b} /> : <GroupsPage />;
    case 'builds':
      return a ? <BuildPage me={me} id={a} tab={b} /> : <BuildsPage />;
    case 'permissions':
      return <PermissionsPage />;
    default:
      return a ? <AppPage me={me} name={a} tab={b} /> : <AppsPage me={me} />;
  }
}

function BossPage({ me, section, a }: { me: User; section: string; a: string }) {
  if (!me.admin) return <p class="error">Boss is for administrators; {me.name} is not one.</p>;
  switch (section) {
    case 'stats':
      return <StatsPage />;
    case 'cells':
      return <CellsPage />;
    case 'nginx':
      return <NginxPage group={a} />;
    default:
      return <UsersPage />;
  }
}

render(<App />, document.getElementById('root')!);
