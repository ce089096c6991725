"""``stream console``: the triage console (``stream.console``) on a local web port."""

from __future__ import annotations

import secrets

import click

from stream.cli.base import load_settings, main, settings_options


@main.command()
@settings_options("bootstrap_servers", "kafka_properties", "alert_topic", "incident_topic",
                  "entity_alert_topic", "feedback_topic", "suppression_topic", "dlq_topic",
                  "drift_topic")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (the default is this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8686, show_default=True)
@click.option("--auth-token", envvar="STREAM_CONSOLE_TOKEN", default=None,
              help="The token every page and action needs [env: STREAM_CONSOLE_TOKEN]; "
              "without one, a random token is made and printed once.")
@click.option("--console-db", default="console.db", show_default=True,
              help="SQLite file of the recent history it keeps (a restart does not start "
              "blank).")
@click.option("--keep-days", type=click.FloatRange(min=0, min_open=True), default=7.0,
              show_default=True, help="Days of history kept.")
def console(host: str, port: int, auth_token: str | None, console_db: str, keep_days: float,
            **settings: object) -> None:
    """Serve the triage console: queue, incidents and entities, verdicts, suppressions."""
    import uvicorn

    from stream.console.app import make_app
    from stream.console.follower import Follower
    from stream.console.store import ConsoleStore

    s = load_settings(**settings)
    token = auth_token or secrets.token_urlsafe(24)
    if len(token) < 16:
        raise click.BadParameter("at least 16 characters", param_hint="--auth-token")
    store = ConsoleStore(console_db, max_age=keep_days * 86400.0)
    follower = Follower(store, s.kafka_common(), [s.alert_topic, s.incident_topic,
                                                  s.entity_alert_topic, s.drift_topic])
    follower.start()
    if auth_token is None:
        click.echo(f"console: http://{host}:{port}/login?token={token}", err=True)
    else:
        click.echo(f"console: http://{host}:{port}/ (log in at /login?token=...)", err=True)
    try:
        uvicorn.run(make_app(store, s, token), host=host, port=port, log_level="warning",
                    access_log=False)
    finally:
        follower.stop()
        store.close()
