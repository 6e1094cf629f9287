"""Offline checks of deploy/compose; run through the `check` wrapper.

Every rule guards against a mistake that `docker compose config` would not
catch, or that this machine (no docker engine) could not catch otherwise:
a service depending on one that does not exist or is in a profile, an
environment variable no crate reads (a typo the service silently ignores),
a session URL sent through the transaction pooler or a service bypassing it,
a dashboard querying a metric nobody exports. Run with `--self-test` to see
each rule fail on a mistake made on purpose in a temporary copy.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = Path(os.environ.get("REPO_ROOT", HERE.parent.parent))
TOOLS_VENV = Path(
    os.environ.get(
        "TOOLS_VENV",
        Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "cqrs-skeleton/venv",
    )
)
COMPOSE_SCHEMA = Path(os.environ.get("COMPOSE_SCHEMA", TOOLS_VENV / "share/compose-spec.json"))

# The crates whose environment variables and metrics the services have: each
# binary's own crate (named like the binary) plus the libraries all share.
SERVICE_CRATES = ["command-service", "query-service", "projector"]
SHARED_CRATES = ["service-runtime", "traffic-control", "access-control", "event-bus"]
CRATE_SOURCES = [f"{crate}/src" for crate in SERVICE_CRATES + SHARED_CRATES]
# Read by a library rather than through a string literal of ours, and the
# code that makes it so (the allowance lapses if that code goes).
LIBRARY_ENV = {"RUST_LOG": ("service-runtime/src/telemetry.rs", "from_default_env")}

PROJECT_DOCKERFILE = "deploy/docker/Dockerfile"
PGBOUNCER_REQUIRED = {
    "pool_mode": "transaction",
    "server_reset_query": "DEALLOCATE ALL",
    "server_reset_query_always": "1",
}
PGBOUNCER_IGNORED_PARAMETERS = {"extra_float_digits", "options"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Problems:
    """One line per problem, prefixed with the file it is in."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{where}: {message}")


# ------------------------------------------------------------------ sources


@functools.lru_cache(maxsize=None)
def rust_string_literals(pattern: str, sources: tuple[str, ...] = tuple(CRATE_SOURCES)) -> frozenset[str]:
    """Every string literal in `sources` that matches `pattern` whole."""
    literal = re.compile(r'"(' + pattern + r')"')
    found: set[str] = set()
    for source in sources:
        for path in sorted((REPO_ROOT / source).rglob("*.rs")):
            found.update(literal.findall(path.read_text(encoding="utf-8")))
    return frozenset(found)


def env_sources(binary: str) -> tuple[str, ...]:
    """Where the variables `binary` reads are named: its crate and the shared
    ones (every crate, for a binary that is not one of the services)."""
    if binary not in SERVICE_CRATES:
        return tuple(CRATE_SOURCES)
    return tuple(f"{crate}/src" for crate in [binary] + SHARED_CRATES)


def env_names_read(sources: tuple[str, ...]) -> set[str]:
    names = set(rust_string_literals(r"[A-Z][A-Z0-9_]*", sources))
    for name, (file, marker) in LIBRARY_ENV.items():
        path = REPO_ROOT / file
        if path.is_file() and marker in path.read_text(encoding="utf-8"):
            names.add(name)
    return names


@functools.lru_cache(maxsize=None)
def needs_session_url(binary: str) -> bool:
    """Whether `binary` keeps session state on the primary (migrations, the
    relay's lock) and so requires PRIMARY_SESSION_DATABASE_URL behind a
    transaction pooler: its own crate asks service_runtime for that URL."""
    if binary not in SERVICE_CRATES:
        return False
    call = re.compile(r"\bsession_database_url\(")
    return any(call.search(path.read_text(encoding="utf-8")) for path in (REPO_ROOT / binary / "src").rglob("*.rs"))


def aggregate_types() -> list[str] | None:
    """schema::envelope::AGGREGATE_TYPES, resolved to the constants' values."""
    envelope = REPO_ROOT / "schema/src/envelope.rs"
    if not envelope.is_file():
        return None
    match = re.search(r"AGGREGATE_TYPES\s*:\s*\[[^\]]*\]\s*=\s*\[([^\]]*)\]", envelope.read_text())
    if not match:
        return None
    values = []
    for item in match.group(1).split(","):
        item = item.strip()
        if not item:
            continue
        literal = re.fullmatch(r'"([^"]*)"', item)
        module = re.fullmatch(r"(\w+)::AGGREGATE_TYPE", item)
        if literal:
            values.append(literal.group(1))
        elif module and (REPO_ROOT / f"schema/src/{module.group(1)}.rs").is_file():
            text = (REPO_ROOT / f"schema/src/{module.group(1)}.rs").read_text()
            const = re.search(r'pub const AGGREGATE_TYPE: &str = "([^"]*)"', text)
            if not const:
                return None
            values.append(const.group(1))
        else:
            return None
    return values


# ------------------------------------------------------------------ YAML


def duplicate_keys(text: str) -> list[str]:
    """Keys written twice in one mapping. PyYAML keeps the last silently,
    and so does compose: a second `environment` entry would win unnoticed.
    Checked on the node tree, before merge keys (`<<`) are resolved, since
    overriding a merged key is intended."""
    found: list[str] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node, path: str) -> None:
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":
                    walk(value, path)
                    continue
                name = str(key.value)
                if name in keys:
                    found.append(f"{path}.{name}" if path else name)
                keys.add(name)
                walk(value, f"{path}.{name}" if path else name)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "")
    return found


def load_yaml(path: Path, problems: Problems, label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        problems.add(label, f"cannot read: {error}")
        return None
    try:
        data = yaml.safe_load(text)
        for key in duplicate_keys(text):
            problems.add(label, f"duplicate key {key}")
    except yaml.YAMLError as error:
        problems.add(label, "cannot parse YAML: " + " ".join(str(error).split()))
        return None
    return data


# ------------------------------------------------------------------ interpolation

VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolations(text: str) -> Iterable[tuple[str | None, str, str]]:
    """Compose's `$` syntax in `text`: (name, operator, argument) per use,
    name None for a `$` compose would reject."""
    i = 0
    while True:
        i = text.find("$", i)
        if i < 0:
            return
        rest = text[i + 1 :]
        if rest.startswith("$"):
            i += 2
            continue
        if rest.startswith("{"):
            end = rest.find("}")
            body = rest[1:end] if end > 0 else ""
            match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", body, re.S)
            if end < 0 or not match:
                yield None, "", text[i : i + 20]
                i += 1
                continue
            yield match.group(1), match.group(2) or "", match.group(3) or ""
            i += end + 2
            continue
        name = VARIABLE.match(rest)
        if name:
            yield name.group(0), "", ""
            i += 1 + name.end()
            continue
        yield None, "", text[i : i + 20]
        i += 1


def interpolate(text: str, env: dict[str, str]) -> str:
    """`text` as compose would make it with `env` (the .env.example values)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
            return arg
        return value or ""

    pattern = r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
    return re.sub(pattern, replace, text)


def strings_in(data: Any, path: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from strings_in(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from strings_in(value, f"{path}[{i}]")
    elif isinstance(data, str):
        yield path, data


def map_strings(data: Any, change: Callable[[str], str]) -> Any:
    if isinstance(data, dict):
        return {key: map_strings(value, change) for key, value in data.items()}
    if isinstance(data, list):
        return [map_strings(value, change) for value in data]
    if isinstance(data, str):
        return change(data)
    return data


def read_env_example(path: Path, problems: Problems) -> tuple[dict[str, str], set[str]]:
    """Assigned variables, and the names mentioned in commented-out lines."""
    assigned: dict[str, str] = {}
    commented: set[str] = set()
    if not path.is_file():
        problems.add(path.name, "missing: compose.yaml's variables are documented there")
        return assigned, commented
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\s*(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if not match:
            continue
        if match.group(1):
            commented.add(match.group(2))
        else:
            assigned[match.group(2)] = match.group(3)
    return assigned, commented


# ------------------------------------------------------------------ compose


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {name: value for name, value in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def is_project_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == PROJECT_DOCKERFILE


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) in ("no", "on-failure")


def http_port(service: dict[str, Any]) -> int | None:
    """The port a project service listens on (its *_HTTP_ADDR)."""
    for name, value in environment(service).items():
        if name.endswith("_HTTP_ADDR") and ":" in value:
            port = value.rsplit(":", 1)[1]
            if port.isdigit():
                return int(port)
    return None


def bind_mounts(service: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(host source, container target) of the service's bind mounts."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2 and parts[0].startswith((".", "/")):
                yield parts[0], parts[1]
        elif isinstance(volume, dict) and volume.get("type") == "bind":
            yield str(volume.get("source", "")), str(volume.get("target", ""))


def network_names(services: dict[str, Any]) -> set[str]:
    """Names a container can reach: service names and network aliases."""
    names = set(services)
    for service in services.values():
        networks = service.get("networks")
        if isinstance(networks, dict):
            for spec in networks.values():
                names.update((spec or {}).get("aliases") or [])
    return names


def check_schema(compose: Any, problems: Problems) -> None:
    if not COMPOSE_SCHEMA.is_file():
        problems.add("compose.yaml", f"compose schema {COMPOSE_SCHEMA} missing (run: deploy/local/stack install)")
        return
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    for error in sorted(validator.iter_errors(compose), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        message = " ".join(error.message.split())
        if len(message) > 200:
            message = message[:200] + "..."
        problems.add("compose.yaml", f"schema: {where}: {message}")


def check_interpolation(raw: Any, example: dict[str, str], commented: set[str], problems: Problems) -> None:
    for path, text in strings_in(raw):
        for name, op, arg in interpolations(text):
            if name is None:
                problems.add("compose.yaml", f"{path}: bad interpolation near {arg!r} (a literal $ is written $$)")
            elif op in ("", ":?", "?") and name not in example:
                problems.add(".env.example", f"does not set {name}, which compose.yaml requires ({path})")
            elif name not in example and name not in commented:
                problems.add(".env.example", f"does not mention {name}, which compose.yaml reads ({path})")


def check_dependencies(services: dict[str, Any], problems: Problems) -> None:
    for name, service in services.items():
        mine = set(service.get("profiles") or [])
        for target, condition in depends_on(service).items():
            where = f"services.{name}.depends_on.{target}"
            other = services.get(target)
            if other is None:
                problems.add("compose.yaml", f"{where}: service {target} does not exist")
                continue
            theirs = set(other.get("profiles") or [])
            if theirs and (not mine or not mine <= theirs):
                problems.add(
                    "compose.yaml",
                    f"{where}: {target} is only in profile(s) {sorted(theirs)}, but {name} also runs "
                    f"without them ({sorted(mine) or 'always'}): compose refuses to start it then",
                )
            if condition == "service_healthy" and "healthcheck" not in other:
                problems.add("compose.yaml", f"{where}: waits for service_healthy but {target} has no healthcheck")
            if condition == "service_completed_successfully" and not is_one_shot(other):
                problems.add(
                    "compose.yaml",
                    f"{where}: waits for {target} to complete, but restart: {other.get('restart')} restarts it",
                )


def check_bind_mounts(root: Path, services: dict[str, Any], problems: Problems) -> None:
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            if source.startswith(".") and not (root / source).exists():
                problems.add("compose.yaml", f"services.{name}.volumes: {source} does not exist")


def pooler(services: dict[str, Any]) -> str | None:
    """The transaction pooler's service name."""
    return next((n for n, s in services.items() if "pgbouncer" in str(s.get("image", ""))), None)


def url_host_port(url: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(url)
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def check_project_services(
    services: dict[str, Any], pgbouncer_port: int | None, problems: Problems
) -> None:
    reachable = network_names(services)
    pooler_name = pooler(services)
    project = {n: s for n, s in services.items() if is_project_image(s)}
    if not project:
        problems.add("compose.yaml", f"no service builds {PROJECT_DOCKERFILE}")
    migrators = {n for n, s in project.items() if "migrate" in (s.get("command") or [])}
    if not migrators:
        problems.add("compose.yaml", "no migration job (a project service with command [..., migrate])")
    topic_jobs = {n for n, s in services.items() if "EVENT_AGGREGATES" in environment(s)}

    for name, service in project.items():
        where = f"services.{name}"
        env = environment(service)
        # Per binary: a variable another service reads is still ignored here.
        binary = str((service.get("command") or [""])[0])
        sources = env_sources(binary)
        for var in sorted(set(env) - env_names_read(sources)):
            problems.add(
                "compose.yaml",
                f"{where}.environment.{var}: {binary or 'the image'} does not read it "
                f"(no string literal \"{var}\" in {', '.join(sources)})",
            )
        # Every database, Redis and Kafka address must name something on the network.
        for var, value in env.items():
            urls = [u for u in value.split(",") if re.match(r"(postgres|postgresql|redis)://", u.strip())]
            for url in urls:
                host, _ = url_host_port(url.strip())
                if host not in reachable:
                    problems.add("compose.yaml", f"{where}.environment.{var}: host {host} is not a compose service")
        for broker in filter(None, env.get("KAFKA_BROKERS", "").split(",")):
            host = broker.strip().rsplit(":", 1)[0]
            if host not in reachable:
                problems.add("compose.yaml", f"{where}.environment.KAFKA_BROKERS: host {host} is not a compose service or alias")
        # Sessions must bypass the transaction pooler; everything else goes
        # through it once there is one. The migration job's
        # PRIMARY_DATABASE_URL is a session URL (`migrate` falls back to it).
        pooled = env.get("PRIMARY_TRANSACTION_POOLER", "false").lower() == "true"
        migrator = name in migrators
        session_url = env.get("PRIMARY_SESSION_DATABASE_URL") or (env.get("PRIMARY_DATABASE_URL") if migrator else None)
        primary_url = None if migrator else env.get("PRIMARY_DATABASE_URL")
        primary_host, primary_port = url_host_port(primary_url or "")
        session_host, _ = url_host_port(session_url or "")
        if pooler_name and primary_url and not pooled and primary_host != pooler_name:
            problems.add(
                "compose.yaml",
                f"{where}: PRIMARY_DATABASE_URL bypasses the pooler {pooler_name}: every service's "
                "primary connections go through it (with PRIMARY_TRANSACTION_POOLER=true); only "
                "PRIMARY_SESSION_DATABASE_URL reaches the primary directly",
            )
        if pooled and (primary_host != pooler_name or primary_port != pgbouncer_port):
            problems.add(
                "compose.yaml",
                f"{where}: PRIMARY_TRANSACTION_POOLER=true but PRIMARY_DATABASE_URL is not the pooler "
                f"({pooler_name}:{pgbouncer_port})",
            )
        if not pooled and pooler_name and primary_host == pooler_name:
            problems.add(
                "compose.yaml",
                f"{where}: PRIMARY_DATABASE_URL goes through the pooler {pooler_name} without PRIMARY_TRANSACTION_POOLER=true",
            )
        if pooler_name and session_host == pooler_name:
            variable = "PRIMARY_SESSION_DATABASE_URL" if env.get("PRIMARY_SESSION_DATABASE_URL") else "PRIMARY_DATABASE_URL"
            problems.add(
                "compose.yaml",
                f"{where}: {variable} (a session URL) goes through the transaction pooler; sessions "
                "(advisory locks, migrations) must reach the primary directly",
            )
        if pooled and needs_session_url(binary) and not session_host:
            problems.add("compose.yaml", f"{where}: behind the pooler it needs PRIMARY_SESSION_DATABASE_URL")
        if is_one_shot(service):
            continue
        # Long-running services start after the migrations and the topics.
        deps = depends_on(service)
        if migrators and not any(deps.get(m) == "service_completed_successfully" for m in migrators):
            problems.add("compose.yaml", f"{where}: does not wait for the migration job ({', '.join(sorted(migrators))})")
        if "KAFKA_BROKERS" in env:
            if not any(deps.get(t) == "service_completed_successfully" for t in topic_jobs):
                problems.add(
                    "compose.yaml",
                    f"{where}: uses Kafka but does not wait for the topic job ({', '.join(sorted(topic_jobs)) or 'none'})",
                )
        if http_port(service) is None:
            problems.add("compose.yaml", f"{where}: no *_HTTP_ADDR with a port in its environment")


def check_topics(services: dict[str, Any], problems: Problems) -> None:
    jobs = {n: environment(s) for n, s in services.items() if "EVENT_AGGREGATES" in environment(s)}
    if not jobs:
        problems.add("compose.yaml", "no topic job (a service with EVENT_AGGREGATES) creates the event topics")
        return
    expected = aggregate_types()
    for job, env in jobs.items():
        if expected is None:
            problems.add("schema/src/envelope.rs", "cannot read AGGREGATE_TYPES to compare with EVENT_AGGREGATES")
        elif sorted(env["EVENT_AGGREGATES"].split()) != sorted(t.lower() for t in expected):
            problems.add(
                "compose.yaml",
                f"services.{job}.environment.EVENT_AGGREGATES={env['EVENT_AGGREGATES']!r}: the aggregate types "
                f"are {[t.lower() for t in expected]} (schema::envelope::AGGREGATE_TYPES)",
            )
        for name, service in services.items():
            theirs = environment(service)
            if not is_project_image(service) or "KAFKA_BROKERS" not in theirs:
                continue
            for var in ("KAFKA_TOPIC_PREFIX", "KAFKA_TOPIC_PARTITIONS"):
                if theirs.get(var) != env.get(var):
                    problems.add(
                        "compose.yaml",
                        f"services.{name}.environment.{var}={theirs.get(var)!r} differs from "
                        f"services.{job}'s {env.get(var)!r}: topics would not have the shape the services expect",
                    )


def check_pgbouncer(root: Path, services: dict[str, Any], problems: Problems) -> int | None:
    path = root / "pgbouncer/pgbouncer.ini"
    label = "pgbouncer/pgbouncer.ini"
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"), strict=True)
    parser.optionxform = str  # keep database names as written
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (OSError, configparser.Error) as error:
        problems.add(label, "cannot parse: " + " ".join(str(error).split()))
        return None
    if not parser.has_section("pgbouncer"):
        problems.add(label, "no [pgbouncer] section")
        return None
    settings = parser["pgbouncer"]
    for key, value in PGBOUNCER_REQUIRED.items():
        if settings.get(key, "").strip() != value:
            problems.add(label, f"{key} must be {value!r} (is {settings.get(key)!r}); see the comments in the file")
    ignored = {p.strip() for p in settings.get("ignore_startup_parameters", "").split(",")}
    for parameter in sorted(PGBOUNCER_IGNORED_PARAMETERS - ignored):
        problems.add(label, f"ignore_startup_parameters lacks {parameter}: sqlx's connections would be refused")
    if parser.has_section("databases"):
        for db, spec in parser["databases"].items():
            host = re.search(r"\bhost=(\S+)", spec)
            if host and host.group(1) not in services:
                problems.add(label, f"[databases] {db}: host {host.group(1)} is not a compose service")
    port = settings.get("listen_port", "6432").strip()
    return int(port) if port.isdigit() else None


def check_prometheus(root: Path, services: dict[str, Any], problems: Problems) -> set[str]:
    label = "prometheus/prometheus.yml"
    config = load_yaml(root / label, problems, label)
    if not isinstance(config, dict):
        if config is not None:
            problems.add(label, "not a mapping")
        return set()
    jobs: set[str] = set()
    scraped: set[str] = set()
    for i, job in enumerate(config.get("scrape_configs") or []):
        name = job.get("job_name", f"#{i}")
        jobs.add(name)
        targets: list[tuple[str, int | None]] = []
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = str(target).rpartition(":")
                targets.append((host or str(target), int(port) if port.isdigit() else None))
        for sd in job.get("dns_sd_configs") or []:
            if sd.get("type", "SRV") != "A":
                problems.add(label, f"job {name}: dns_sd_configs type must be A (Docker's DNS has no SRV records)")
            for host in sd.get("names") or []:
                targets.append((host, sd.get("port")))
        for host, port in targets:
            service = services.get(host)
            if service is None:
                problems.add(label, f"job {name}: target {host} is not a compose service")
                continue
            scraped.add(host)
            expected = http_port(service) if is_project_image(service) else None
            if expected is not None and port != expected:
                problems.add(label, f"job {name}: {host} listens on {expected}, not {port}")
    for name, service in services.items():
        if is_project_image(service) and not is_one_shot(service) and name not in scraped:
            problems.add(label, f"service {name} is not scraped")
    return jobs


PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (strings, label matchers, ranges,
    grouping labels and functions removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # part of a number or duration (5m, 1e3)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def dashboard_queries(node: Any) -> Iterable[tuple[str, Any]]:
    """(expr, datasource) of every target, rows' nested panels included."""
    if isinstance(node, dict):
        for panel in node.get("panels") or []:
            yield from dashboard_queries(panel)
        for target in node.get("targets") or []:
            if isinstance(target, dict) and "expr" in target:
                yield target["expr"], target.get("datasource", node.get("datasource"))


def check_grafana(root: Path, services: dict[str, Any], jobs: set[str], problems: Problems) -> None:
    grafana = next((s for s in services.values() if "grafana" in str(s.get("image", ""))), None)
    if grafana is None:
        problems.add("compose.yaml", "no grafana service")
        return
    mounts = {target: source for source, target in bind_mounts(grafana)}
    provisioning = mounts.get("/etc/grafana/provisioning")
    if provisioning is None:
        problems.add("compose.yaml", "grafana does not mount a provisioning directory at /etc/grafana/provisioning")
        return
    provisioning_dir = root / provisioning

    uids: set[str] = set()
    for path in sorted((provisioning_dir / "datasources").glob("*.y*ml")):
        label = str(path.relative_to(root))
        data = load_yaml(path, problems, label) or {}
        uids.update(str(d.get("uid")) for d in data.get("datasources") or [] if d.get("uid"))
    if not uids:
        problems.add(provisioning, "no datasource with a uid under datasources/")

    dashboards: list[Path] = []
    providers = sorted((provisioning_dir / "dashboards").glob("*.y*ml"))
    if not providers:
        problems.add(provisioning, "no dashboard provider under dashboards/")
    for path in providers:
        label = str(path.relative_to(root))
        data = load_yaml(path, problems, label) or {}
        for provider in data.get("providers") or []:
            target = str((provider.get("options") or {}).get("path", ""))
            mount = next(((t, s) for t, s in mounts.items() if target == t or target.startswith(t + "/")), None)
            if mount is None:
                problems.add(label, f"provider {provider.get('name')}: path {target} is not mounted into grafana")
                continue
            folder = root / mount[1] / os.path.relpath(target, mount[0])
            found = sorted(folder.glob("*.json"))
            if not found:
                problems.add(label, f"provider {provider.get('name')}: no dashboard JSON in {folder.relative_to(root)}")
            dashboards.extend(found)

    for path in dashboards:
        check_dashboard(root, path, uids, jobs, problems)


def check_dashboard(root: Path, path: Path, uids: set[str], jobs: set[str], problems: Problems) -> None:
    label = str(path.relative_to(root))
    try:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        problems.add(label, f"cannot parse JSON: {error}")
        return
    listed_path = path.parent / "metrics-used.txt"
    list_label = str(listed_path.relative_to(root))
    if not listed_path.is_file():
        problems.add(list_label, "missing: the metric names the dashboard uses, one per line")
        return
    listed = [line.strip() for line in listed_path.read_text().splitlines() if line.strip()]
    defined = rust_string_literals(r"[a-z_:][a-z0-9_:]*")
    for name in listed:
        if name not in defined:
            problems.add(list_label, f"{name}: no crate defines it (no string literal \"{name}\" in the service crates)")

    used: set[str] = set()
    queries = list(dashboard_queries(dashboard))
    if not queries:
        problems.add(label, "no PromQL queries")
    for expr, datasource in queries:
        uid = datasource.get("uid") if isinstance(datasource, dict) else datasource
        if uid not in uids:
            problems.add(label, f"datasource {uid!r} is not provisioned ({sorted(uids)}): {expr}")
        for op, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', expr):
            for job in value.split("|") if op == "=~" else [value]:
                if job not in jobs:
                    problems.add(label, f"job {job!r} is not a Prometheus job ({sorted(jobs)}): {expr}")
        for metric in promql_metrics(expr):
            base = next(
                (metric[: -len(s)] for s in HISTOGRAM_SUFFIXES if metric.endswith(s) and metric[: -len(s)] in listed),
                metric,
            )
            if base not in listed:
                problems.add(label, f"metric {metric} is not in {list_label}: {expr}")
            used.add(base)
    for name in listed:
        if name not in used:
            problems.add(list_label, f"{name} is not used by the dashboard (the list must match it)")


def check_nginx(root: Path, services: dict[str, Any], problems: Problems) -> None:
    label = "nginx/nginx.conf"
    try:
        text = re.sub(r"#[^\n]*", "", (root / label).read_text(encoding="utf-8"))
    except OSError as error:
        problems.add(label, f"cannot read: {error}")
        return
    upstreams = dict(re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", text))
    if not upstreams:
        problems.add(label, "no upstream block")
    for name, body in upstreams.items():
        for host, port in re.findall(r"\bserver\s+([A-Za-z0-9._-]+):(\d+)", body):
            service = services.get(host)
            if service is None:
                problems.add(label, f"upstream {name}: {host} is not a compose service")
            elif is_project_image(service) and http_port(service) != int(port):
                problems.add(label, f"upstream {name}: {host} listens on {http_port(service)}, not {port}")
    for target in re.findall(r"proxy_pass\s+https?://([^/;\s]+)", text):
        if target not in upstreams:
            problems.add(label, f"proxy_pass to {target}, which is no upstream")


# ------------------------------------------------------------------ driver


def run_checks(root: Path) -> list[str]:
    problems = Problems()
    raw = load_yaml(root / "compose.yaml", problems, "compose.yaml")
    if not isinstance(raw, dict):
        if raw is not None:
            problems.add("compose.yaml", "not a mapping")
        return problems.lines
    check_schema(raw, problems)
    example, commented = read_env_example(root / ".env.example", problems)
    check_interpolation(raw, example, commented, problems)
    compose = map_strings(raw, lambda s: interpolate(s, example))
    services = compose.get("services") or {}
    if not isinstance(services, dict):
        return problems.lines
    check_dependencies(services, problems)
    check_bind_mounts(root, services, problems)
    pgbouncer_port = check_pgbouncer(root, services, problems)
    check_project_services(services, pgbouncer_port, problems)
    check_topics(services, problems)
    jobs = check_prometheus(root, services, problems)
    check_grafana(root, services, jobs, problems)
    check_nginx(root, services, problems)
    return problems.lines


# One deliberate mistake per rule: (what, file, text to replace, replacement,
# a fragment the resulting problem line must contain).
MISTAKES = [
    ("YAML syntax", "compose.yaml", "services:\n", "services:\n  - broken: [\n", "cannot parse YAML"),
    ("duplicate key", "compose.yaml", "      PRIMARY_POOL_SIZE: \"16\"\n",
     "      PRIMARY_POOL_SIZE: \"16\"\n      PRIMARY_POOL_SIZE: \"32\"\n", "duplicate key"),
    ("newer-than-Oct-2021 compose key", "compose.yaml", "  start_period: 30s\n",
     "  start_period: 30s\n  start_interval: 1s\n", "schema:"),
    ("depends_on unknown service", "compose.yaml", "      redis:\n        condition: service_healthy\n\n  query-service:",
     "      rediss:\n        condition: service_healthy\n\n  query-service:", "does not exist"),
    ("service_healthy without healthcheck", "compose.yaml",
     "    healthcheck:\n      test: [\"CMD-SHELL\", \"redis-cli ping | grep -qx PONG\"]\n      interval: 5s\n      timeout: 3s\n      retries: 10\n",
     "", "has no healthcheck"),
    ("one-shot that restarts", "compose.yaml", "  migrate:\n    <<: *app\n    restart: \"no\"",
     "  migrate:\n    <<: *app\n    restart: unless-stopped", "restarts it"),
    ("always-on service depending on a profiled one", "compose.yaml",
     "      kafka-topics:\n        condition: service_completed_successfully\n      pgbouncer:\n        condition: service_healthy\n      postgres-primary:\n        condition: service_healthy\n      redis:\n        condition: service_healthy\n\n  query-service:",
     "      kafka:\n        condition: service_healthy\n      kafka-topics:\n        condition: service_completed_successfully\n      pgbouncer:\n        condition: service_healthy\n      postgres-primary:\n        condition: service_healthy\n      redis:\n        condition: service_healthy\n\n  query-service:",
     "compose refuses"),
    ("env var no crate reads", "compose.yaml", "      PRIMARY_POOL_SIZE: \"16\"", "      PRIMARY_POOL_SIZES: \"16\"",
     "command-service does not read it"),
    ("env var of another service", "compose.yaml", "      PROJECTOR_POOL_SIZE: \"4\"", "      PRIMARY_POOL_SIZE: \"4\"",
     "services.projector.environment.PRIMARY_POOL_SIZE: projector does not read it"),
    ("session URL through the pooler", "compose.yaml",
     "PRIMARY_SESSION_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@postgres-primary:5432/app\n      PRIMARY_POOL_SIZE",
     "PRIMARY_SESSION_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@pgbouncer:6432/app\n      PRIMARY_POOL_SIZE",
     "must reach the primary directly"),
    ("pooled URL straight to the primary", "compose.yaml",
     "      PRIMARY_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@pgbouncer:6432/app\n      PRIMARY_TRANSACTION_POOLER: \"true\"",
     "      PRIMARY_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@postgres-primary:5432/app\n      PRIMARY_TRANSACTION_POOLER: \"true\"",
     "is not the pooler"),
    ("URL host typo", "compose.yaml", "REDIS_URL: redis://redis:6379", "REDIS_URL: redis://rediss:6379",
     "host rediss is not a compose service"),
    ("missing bind-mount source", "compose.yaml", "./nginx/nginx.conf:", "./nginx/nginx.cnf:", "does not exist"),
    ("required variable missing from .env.example", ".env.example", "GRAFANA_ADMIN_PASSWORD=change-me-grafana\n", "",
     "does not set GRAFANA_ADMIN_PASSWORD"),
    ("unescaped $", "compose.yaml", "redis-cli ping | grep -qx PONG", "redis-cli ping | grep -qx $(echo PONG)",
     "bad interpolation"),
    ("migration job missing from depends_on", "compose.yaml",
     "      migrate:\n        condition: service_completed_successfully\n      pgbouncer:\n        condition: service_healthy\n      postgres-replica:",
     "      pgbouncer:\n        condition: service_healthy\n      postgres-replica:", "does not wait for the migration job"),
    ("topic job missing from depends_on", "compose.yaml",
     "      kafka-topics:\n        condition: service_completed_successfully\n      pgbouncer:\n        condition: service_healthy\n      postgres-primary:\n        condition: service_healthy\n      redis:\n        condition: service_healthy\n\n  # Load",
     "      pgbouncer:\n        condition: service_healthy\n      postgres-primary:\n        condition: service_healthy\n      redis:\n        condition: service_healthy\n\n  # Load",
     "does not wait for the topic job"),
    ("topic list out of date", "compose.yaml", "EVENT_AGGREGATES: product order", "EVENT_AGGREGATES: product",
     "aggregate types"),
    ("topic job with other partitions", "compose.yaml", "      WAIT_SECONDS: \"180\"",
     "      WAIT_SECONDS: \"180\"\n      KAFKA_TOPIC_PARTITIONS: \"4\"", "differs from"),
    ("pgbouncer in session mode", "pgbouncer/pgbouncer.ini", "pool_mode = transaction", "pool_mode = session",
     "pool_mode must be"),
    ("pgbouncer without the reset", "pgbouncer/pgbouncer.ini", "server_reset_query_always = 1",
     "server_reset_query_always = 0", "server_reset_query_always must be"),
    ("pgbouncer refusing sqlx's startup parameter", "pgbouncer/pgbouncer.ini",
     "ignore_startup_parameters = extra_float_digits,options", "ignore_startup_parameters = options",
     "lacks extra_float_digits"),
    ("prometheus target typo", "prometheus/prometheus.yml", "names: [projector]", "names: [projecter]",
     "projecter is not a compose service"),
    ("prometheus wrong port", "prometheus/prometheus.yml",
     "names: [query-service]\n        type: A\n        port: 8080", "names: [query-service]\n        type: A\n        port: 8081",
     "listens on 8080, not 8081"),
    ("service not scraped", "prometheus/prometheus.yml",
     "  - job_name: projector\n    dns_sd_configs:\n      - names: [projector]\n        type: A\n        port: 8080\n        refresh_interval: 15s\n",
     "", "service projector is not scraped"),
    ("prometheus.yml syntax", "prometheus/prometheus.yml", "scrape_configs:", "scrape_configs: [", "cannot parse YAML"),
    ("dashboard JSON syntax", "grafana/dashboards/cqrs-skeleton.json", "{", "{{", "cannot parse JSON"),
    ("dashboard metric typo", "grafana/dashboards/cqrs-skeleton.json", "max(outbox_lag_events)",
     "max(outbox_lag_event)", "metric outbox_lag_event is not in"),
    ("listed metric nobody exports", "grafana/dashboards/metrics-used.txt", "relay_leader\n",
     "relay_leader\nrelay_leaders\n", "relay_leaders: no crate defines it"),
    ("listed metric the dashboard does not use", "grafana/dashboards/metrics-used.txt", "relay_leader\n",
     "relay_leader\nprojector_parked_events_total\n", "projector_parked_events_total is not used by the dashboard"),
    ("unprovisioned datasource", "grafana/provisioning/datasources/prometheus.yaml", "uid: prometheus",
     "uid: prom", "is not provisioned"),
    ("dashboard job that Prometheus does not have", "grafana/dashboards/cqrs-skeleton.json",
     'job=\\"command-service\\"', 'job=\\"commands\\"', "job 'commands' is not a Prometheus job"),
    ("dashboard provider path not mounted", "grafana/provisioning/dashboards/cqrs-skeleton.yaml",
     "path: /etc/grafana/dashboards", "path: /var/lib/grafana/dashboards", "is not mounted into grafana"),
    ("nginx upstream typo", "nginx/nginx.conf", "server query-service:8080", "server query_service:8080",
     "query_service is not a compose service"),
    ("nginx upstream wrong port", "nginx/nginx.conf", "server query-service:8080", "server query-service:8081",
     "listens on 8080, not 8081"),
    ("nginx proxying to no upstream", "nginx/nginx.conf", "proxy_pass http://query_service;",
     "proxy_pass http://query;", "which is no upstream"),
    ("SRV discovery", "prometheus/prometheus.yml", "names: [projector]\n        type: A",
     "names: [projector]\n        type: SRV", "type must be A"),
    ("pgbouncer database host typo", "pgbouncer/pgbouncer.ini", "host=postgres-primary", "host=postgres-primay",
     "postgres-primay is not a compose service"),
    ("optional variable undocumented", ".env.example",
     "# KAFKA_BROKERS=broker-1.example:9092,broker-2.example:9092\n", "", "does not mention KAFKA_BROKERS"),
    ("Kafka host typo", "compose.yaml", "${KAFKA_BROKERS:-kafka:9092}", "${KAFKA_BROKERS:-kafak:9092}",
     "host kafak is not a compose service or alias"),
    ("pooled service without a session URL", "compose.yaml",
     "      PRIMARY_SESSION_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@postgres-primary:5432/app\n      PRIMARY_POOL_SIZE",
     "      PRIMARY_POOL_SIZE", "needs PRIMARY_SESSION_DATABASE_URL"),
    ("pooler URL without the pooler flag", "compose.yaml",
     "      PRIMARY_TRANSACTION_POOLER: \"true\"\n      PRIMARY_SESSION_DATABASE_URL", "      PRIMARY_SESSION_DATABASE_URL",
     "without PRIMARY_TRANSACTION_POOLER=true"),
    ("projector straight to the primary while a pooler exists", "compose.yaml",
     "      PRIMARY_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@pgbouncer:6432/app\n      PRIMARY_TRANSACTION_POOLER: \"true\"\n      PRIMARY_SESSION_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@postgres-primary:5432/app\n      PROJECTOR_POOL_SIZE",
     "      PRIMARY_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@postgres-primary:5432/app\n      PROJECTOR_POOL_SIZE",
     "services.projector: PRIMARY_DATABASE_URL bypasses the pooler"),
    ("query-service straight to the primary while a pooler exists", "compose.yaml",
     "      PRIMARY_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@pgbouncer:6432/app\n      PRIMARY_TRANSACTION_POOLER: \"true\"\n      PRIMARY_READ_POOL_SIZE",
     "      PRIMARY_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@postgres-primary:5432/app\n      PRIMARY_READ_POOL_SIZE",
     "services.query-service: PRIMARY_DATABASE_URL bypasses the pooler"),
    ("query-service through the pooler without the pooler flag", "compose.yaml",
     "      PRIMARY_TRANSACTION_POOLER: \"true\"\n      PRIMARY_READ_POOL_SIZE", "      PRIMARY_READ_POOL_SIZE",
     "services.query-service: PRIMARY_DATABASE_URL goes through the pooler pgbouncer without PRIMARY_TRANSACTION_POOLER=true"),
    ("projector behind the pooler without a session URL", "compose.yaml",
     "      PRIMARY_SESSION_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@postgres-primary:5432/app\n      PROJECTOR_POOL_SIZE",
     "      PROJECTOR_POOL_SIZE", "services.projector: behind the pooler it needs PRIMARY_SESSION_DATABASE_URL"),
    ("projector's session URL through the pooler", "compose.yaml",
     "      PRIMARY_SESSION_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@postgres-primary:5432/app\n      PROJECTOR_POOL_SIZE",
     "      PRIMARY_SESSION_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@pgbouncer:6432/app\n      PROJECTOR_POOL_SIZE",
     "services.projector: PRIMARY_SESSION_DATABASE_URL (a session URL) goes through"),
    ("migration job through the pooler", "compose.yaml",
     "command: [\"command-service\", \"migrate\"]\n    environment:\n      LOG_FORMAT: json\n      PRIMARY_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@postgres-primary:5432/app",
     "command: [\"command-service\", \"migrate\"]\n    environment:\n      LOG_FORMAT: json\n      PRIMARY_DATABASE_URL: postgres://app:${APP_DB_PASSWORD:?set APP_DB_PASSWORD in deploy/compose/.env}@pgbouncer:6432/app\n      PRIMARY_TRANSACTION_POOLER: \"true\"",
     "services.migrate: PRIMARY_DATABASE_URL (a session URL) goes through"),
    ("service without an HTTP address", "compose.yaml", "      PROJECTOR_HTTP_ADDR: 0.0.0.0:8080\n", "",
     "no *_HTTP_ADDR"),
    ("no migration job", "compose.yaml", 'command: ["command-service", "migrate"]', 'command: ["command-service"]',
     "no migration job"),
    ("no topic job", "compose.yaml", "EVENT_AGGREGATES: product order", "AGGREGATES: product order", "no topic job"),
    ("grafana provisioning not mounted", "compose.yaml", "./grafana/provisioning:/etc/grafana/provisioning:ro",
     "./grafana/provisioning:/etc/grafana/provisioned:ro", "does not mount a provisioning directory"),
]


def self_test() -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="compose-check-") as tmp:
        pristine = Path(tmp) / "pristine"
        shutil.copytree(HERE, pristine, ignore=shutil.ignore_patterns(".env", "__pycache__"))
        # Problems of the unmodified files (the plain check reports them) do
        # not count: each mistake must add a problem of its own.
        baseline = set(run_checks(pristine))
        for line in sorted(baseline):
            print(f"note (already present, ignored here): {line}")
        for what, file, old, new, expected in MISTAKES:
            copy = Path(tmp) / "broken"
            if copy.exists():
                shutil.rmtree(copy)
            shutil.copytree(pristine, copy)
            path = copy / file
            text = path.read_text(encoding="utf-8")
            if old not in text:
                print(f"FAIL {what}: {file} no longer contains the text the mistake replaces; update MISTAKES")
                failures += 1
                continue
            path.write_text(text.replace(old, new, 1), encoding="utf-8")
            lines = run_checks(copy)
            caught = [line for line in lines if expected in line and line not in baseline]
            if caught:
                print(f"ok   {what}: {caught[0]}")
            else:
                new_lines = [line for line in lines if line not in baseline]
                print(f"FAIL {what}: expected a problem containing {expected!r}, got {new_lines or 'none'}")
                failures += 1
    print(f"self-test: {len(MISTAKES) - failures}/{len(MISTAKES)} mistakes caught")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        print("usage: deploy/compose/check [DIR | --self-test]", file=sys.stderr)
        return 2
    root = Path(argv[1]).resolve() if len(argv) == 2 else HERE
    lines = run_checks(root)
    for line in lines:
        print(line)
    if lines:
        print(f"deploy/compose/check: {len(lines)} problem(s) in {root}", file=sys.stderr)
        return 1
    print(f"deploy/compose/check: {root} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
