#!/usr/bin/env python3
"""Static checks of deploy/ that no off-the-shelf linter does.

Run by deploy/validate.sh (with the venv's Python, which has PyYAML):

  check_deploy.py metrics              every rrproxy_* name that rules.yml and
                                       the Grafana dashboard use is exported
                                       (a quoted "rrproxy_..." in src/metrics.rs)
  check_deploy.py grafana OUT.yml      dashboard structure; writes its PromQL
                                       as recording rules for `promtool check rules`
  check_deploy.py consistency          cross-file agreement: Kubernetes
                                       selectors/ports/probes/volumes, config
                                       keys, timeouts vs. grace periods,
                                       systemd, Dockerfile
  check_deploy.py docker-argv          the image's ENTRYPOINT + CMD arguments,
                                       one a line, with image paths mapped to
                                       the repository files COPY puts there
  check_deploy.py configmap-toml       the ConfigMap's rrproxy.toml, to stdout
  check_deploy.py query-all URL RULES  run every expression of RULES (a file
                                       from `grafana`, plus rules.yml) against
                                       the Prometheus at URL; fail on errors

Exit status 1 with one line per problem; warnings do not fail.
"""

import configparser
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# Announced in the product contract but not exported yet: allowed, with a
# warning, until src/metrics.rs has them.
PENDING_METRICS = {"rrproxy_worker_imbalance_ratio"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# The front waits drain-timeout plus this before killing workers
# (KILL_GRACE in src/front.rs).
KILL_GRACE_S = 3

errors: list[str] = []
warnings: list[str] = []


def err(msg: str) -> None:
    errors.append(msg)


def warn(msg: str) -> None:
    warnings.append(msg)


def finish(what: str) -> int:
    for w in warnings:
        print(f"  warning: {w}")
    for e in errors:
        print(f"  error: {e}")
    if errors:
        print(f"{what}: {len(errors)} problem(s)")
        return 1
    print(f"{what}: OK")
    return 0


# ------------------------------------------------------------------ helpers

def exported_metrics() -> set[str]:
    text = (ROOT / "src" / "metrics.rs").read_text()
    names = set(re.findall(r'"(rrproxy_[a-z0-9_]+)"', text))
    if not names:
        err("found no metric names in src/metrics.rs")
    return names


def file_config_keys() -> set[str]:
    """Keys the config file accepts: fields of `struct FileConfig`."""
    text = (ROOT / "src" / "config" / "file.rs").read_text()
    m = re.search(r"pub struct FileConfig \{(.*?)\n\}", text, re.S)
    if not m:
        err("cannot find `struct FileConfig` in src/config/file.rs")
        return set()
    return {f.replace("_", "-") for f in re.findall(r"pub (\w+):", m.group(1))}


def duration_s(text) -> float:
    """A humantime-style duration ("30s", "5m", "500ms", "1h", bare seconds)."""
    if isinstance(text, (int, float)):
        return float(text)
    total = 0.0
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", str(text))
    if not parts or "".join(a + b for a, b in parts) != str(text).replace(" ", ""):
        raise ValueError(f"unsupported duration {text!r}")
    for num, unit in parts:
        if unit not in units:
            raise ValueError(f"unsupported duration unit in {text!r}")
        total += float(num) * units[unit]
    return total


def systemd_seconds(text: str) -> float:
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return float(text)
    return duration_s(text.replace("min", "m"))


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"\brrproxy_[a-z0-9_]+", text))


def check_names(where: str, names: set[str], known: set[str]) -> None:
    for name in sorted(names):
        base = name
        if name not in known:
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and name[: -len(suffix)] in known:
                    base = name[: -len(suffix)]
        if base in known:
            continue
        if base in PENDING_METRICS:
            warn(f"{where}: {name} is announced but not exported by src/metrics.rs yet")
        else:
            err(f"{where}: {name} is not a metric rrproxy exports (src/metrics.rs)")


# ------------------------------------------------------------------ metrics

def load_rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def load_dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "rrproxy.json").read_text())


def dashboard_targets(dash: dict):
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            yield panel, t


def cmd_metrics() -> int:
    known = exported_metrics()
    used: set[str] = set()
    for rule in load_rules():
        names = metric_names_in(rule["expr"])
        used |= names
        check_names(f"rules.yml {rule['alert']}", names, known)
    dash = load_dashboard()
    for panel, t in dashboard_targets(dash):
        names = metric_names_in(t["expr"])
        used |= names
        check_names(f"rrproxy.json panel {panel['title']!r}", names, known)
    for panel in dash["panels"]:
        check_names(f"rrproxy.json description of {panel['title']!r}",
                    metric_names_in(panel.get("description", "")), known)
    for var in dash["templating"]["list"]:
        check_names(f"rrproxy.json variable {var['name']}",
                    metric_names_in(json.dumps(var.get("query", ""))), known)
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    unused = sorted(known - bases - used)
    print(f"  {len(known)} exported metrics; {len(used)} names used by rules and dashboard")
    if unused:
        print(f"  exported but shown nowhere: {', '.join(unused)}")
    return finish("metric names")


# ------------------------------------------------------------------ grafana

GRAFANA_VARS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def cmd_grafana(out: str) -> int:
    dash = load_dashboard()
    if dash.get("schemaVersion", 0) < 36:
        err(f"schemaVersion {dash.get('schemaVersion')} is old (want >= 36)")
    for key in ("uid", "title"):
        if not dash.get(key):
            err(f"dashboard has no {key}")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        err("no `datasource` template variable of type datasource")
    ids = [p.get("id") for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        err("panel ids are not unique")
    # Panels must not overlap on the 24-column grid.
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p.get("gridPos")
        if not g:
            err(f"panel {p.get('title')!r} has no gridPos")
            continue
        if g["x"] + g["w"] > 24:
            err(f"panel {p['title']!r} is wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    err(f"panel {p['title']!r} overlaps {cells[(x, y)]!r}")
                    break
                cells[(x, y)] = p["title"]
            else:
                continue
            break
    rules = []
    n = 0
    for panel, t in dashboard_targets(dash):
        ds = json.dumps(panel.get("datasource")) + json.dumps(t.get("datasource"))
        if "${datasource}" not in ds:
            err(f"panel {panel['title']!r} does not use the $datasource variable")
        expr = t.get("expr", "")
        if not expr:
            err(f"panel {panel['title']!r} target {t.get('refId')} has no expr")
            continue
        for var in set(re.findall(r"\$\{?(\w+)", expr)):
            if var not in variables and var not in GRAFANA_VARS:
                err(f"panel {panel['title']!r} uses undefined variable ${var}")
        concrete = expr
        for var, value in GRAFANA_VARS.items():
            concrete = concrete.replace("$" + var, value)
        concrete = re.sub(r"\$\{?\w+\}?", ".*", concrete)
        n += 1
        rules.append({"record": f"grafana:panel_{panel['id']}_{t['refId']}", "expr": concrete})
    for name, var in variables.items():
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
        if var["type"] == "query":
            if not m:
                err(f"variable {name}: unsupported query {q!r}")
            else:
                concrete = re.sub(r"\$\{?\w+\}?", ".*", m.group(1))
                rules.append({"record": f"grafana:variable_{name}", "expr": concrete})
    Path(out).write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    print(f"  {len(dash['panels'])} panels, {n} queries, {len(variables)} variables")
    return finish("grafana dashboard")


# ------------------------------------------------------------------ consistency

def k8s_objects() -> dict[tuple[str, str], dict]:
    objs = {}
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                key = (doc["kind"], doc["metadata"]["name"])
                if key in objs:
                    err(f"{path.name}: {key} defined twice")
                objs[key] = doc
    return objs


def subset(small: dict, big: dict) -> bool:
    return all(big.get(k) == v for k, v in (small or {}).items())


def check_kustomizations() -> None:
    for kfile in sorted((DEPLOY / "kubernetes").rglob("kustomization.yaml")):
        k = yaml.safe_load(kfile.read_text())
        for res in k.get("resources", []):
            target = (kfile.parent / res).resolve()
            if target.is_dir():
                if not (target / "kustomization.yaml").exists():
                    err(f"{kfile.relative_to(ROOT)}: {res} has no kustomization.yaml")
            elif not target.exists():
                err(f"{kfile.relative_to(ROOT)}: resource {res} does not exist")
            elif target.parent != kfile.parent and kfile.parent not in target.parents:
                err(f"{kfile.relative_to(ROOT)}: file {res} is outside the kustomization root")


def check_kubernetes(objs, config_keys: set[str], dockerfile_bin: str) -> None:
    dep = objs.get(("Deployment", "rrproxy"))
    if not dep:
        err("no Deployment rrproxy")
        return
    spec = dep["spec"]
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    if not subset(spec["selector"]["matchLabels"], labels):
        err("Deployment selector does not match its pod template labels")
    podspec = pod["spec"]
    (c,) = [c for c in podspec["containers"] if c["name"] == "rrproxy"]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for need in ("proxy", "metrics"):
        if need not in ports:
            err(f"container has no port named {need}")
    # Security context required by the deployment policy.
    psc, csc = podspec.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        err("runAsNonRoot is not set")
    if csc.get("readOnlyRootFilesystem") is not True:
        err("readOnlyRootFilesystem is not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        err("allowPrivilegeEscalation is not false")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        err("capabilities do not drop ALL")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(kind, {}):
                err(f"resources.{kind}.{r} is not set")
    # Probes: on the metrics port, the documented paths.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe, {}).get("httpGet", {})
        if p.get("path") != path:
            err(f"{probe} path is {p.get('path')!r}, want {path}")
        if p.get("port") not in ("metrics", ports.get("metrics")):
            err(f"{probe} is not on the metrics port")
    ann = pod["metadata"].get("annotations", {})
    if ann and str(ann.get("prometheus.io/port")) != str(ports.get("metrics")):
        err("prometheus.io/port annotation differs from the metrics containerPort")
    # Command: the binary the image installs, reading the mounted config.
    # It must be the container's PID 1 (its own init, see src/init.rs): no
    # wrapper in front of it, and no shared PID namespace (the pause
    # container would be PID 1, and the container would end when the first
    # front hands over to a new one in an upgrade).
    cmd = c.get("command", []) + c.get("args", [])
    if not cmd or cmd[0] != dockerfile_bin:
        err(f"container command {cmd[:1]} is not the image's binary {dockerfile_bin}")
    if podspec.get("shareProcessNamespace"):
        err("shareProcessNamespace: rrproxy must be PID 1 of its container (upgrades, front restarts)")
    # The init's notify socket (and the control socket) need a writable /tmp.
    if csc.get("readOnlyRootFilesystem") is True:
        tmp = {m["mountPath"]: m for m in c.get("volumeMounts", [])}.get("/tmp")
        vols = {v["name"]: v for v in podspec.get("volumes", [])}
        if not tmp or "emptyDir" not in vols.get(tmp["name"], {}):
            err("read-only root file system without an emptyDir at /tmp: "
                "rrproxy as PID 1 keeps its notify socket there")
    if "--config" not in cmd:
        err("container is not started with --config")
        return
    config_path = cmd[cmd.index("--config") + 1]
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in podspec.get("volumes", [])}
    cm_mount = mounts.get(str(Path(config_path).parent))
    if not cm_mount or "configMap" not in volumes.get(cm_mount["name"], {}):
        err(f"{config_path} is not in a mounted ConfigMap")
        return
    cm_name = volumes[cm_mount["name"]]["configMap"]["name"]
    cm = objs.get(("ConfigMap", cm_name))
    key = Path(config_path).name
    if not cm or key not in cm.get("data", {}):
        err(f"ConfigMap {cm_name} has no key {key}")
        return
    try:
        conf = tomllib.loads(cm["data"][key])
    except tomllib.TOMLDecodeError as e:
        err(f"ConfigMap {cm_name}/{key}: {e}")
        return
    check_config_keys(f"ConfigMap {cm_name}/{key}", conf, config_keys)
    if "metrics" not in conf or "--metrics" in cmd:
        err("set metrics in the ConfigMap (not on the command line) for the probes")
    else:
        if not conf["metrics"].startswith("0.0.0.0:"):
            err("ConfigMap metrics must listen on 0.0.0.0 for probes and Prometheus")
        if port_of(conf["metrics"]) != ports.get("metrics"):
            err("ConfigMap metrics port differs from the metrics containerPort")
    for addr in conf.get("listen", ["0.0.0.0:8080"]):
        if port_of(addr) != ports.get("proxy"):
            err(f"ConfigMap listen {addr} differs from the proxy containerPort")
    control = conf.get("control")
    if control and control != "off":
        m = mounts.get(str(Path(control).parent))
        if not m or "emptyDir" not in volumes.get(m["name"], {}):
            err(f"control socket {control} is not on a writable emptyDir")
    # Shutdown: preStop sleep + drain + kill grace within the grace period.
    grace = podspec.get("terminationGracePeriodSeconds", 30)
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = duration_s(conf.get("drain-timeout", "30s"))
    if sleep + drain + KILL_GRACE_S >= grace:
        err(f"preStop {sleep}s + drain-timeout {drain:g}s + {KILL_GRACE_S}s >= "
            f"terminationGracePeriodSeconds {grace}")
    # Backends: a headless Service of this base (its name, with `resolve`,
    # or a per-pod name under it) on a port the Service serves.
    headless = {name: o for (kind, name), o in objs.items()
                if kind == "Service" and o["spec"].get("clusterIP") == "None"}
    for b in conf.get("backends", []):
        if isinstance(b, dict):
            addr, resolve = b["address"], b.get("resolve", False)
        else:
            addr, *opts = b.split(",")
            resolve = "resolve" in [o.strip() for o in opts]
        host, port = addr.rsplit(":", 1)
        parts = host.split(".")
        svc_name = parts[0] if resolve else (parts[1] if len(parts) > 2 else None)
        svc = headless.get(svc_name)
        if svc is None:
            warn(f"backend {addr} is not a headless Service here (or a pod name under one)")
        elif int(port) not in [p["port"] for p in svc["spec"]["ports"]]:
            err(f"backend {addr}: port not served by Service {svc_name}")
        elif not resolve:
            warn(f"backend {addr}: one pod's name; `resolve = true` on the Service name follows every pod")
    # Services and the PDB select the proxy pods; ports resolve.
    for (kind, name), o in objs.items():
        if kind == "Service" and name.startswith("rrproxy"):
            if not subset(o["spec"]["selector"], labels):
                err(f"Service {name} does not select the rrproxy pods")
            for p in o["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                if tp not in ports and tp not in ports.values():
                    err(f"Service {name} targetPort {tp} is not a container port")
        if kind == "PodDisruptionBudget" and not subset(o["spec"]["selector"]["matchLabels"], labels):
            err(f"PodDisruptionBudget {name} does not select the rrproxy pods")
    # ServiceMonitor: selects a metrics Service, by port name, job="rrproxy".
    for (kind, name), sm in objs.items():
        if kind != "ServiceMonitor":
            continue
        if sm.get("apiVersion") != "monitoring.coreos.com/v1":
            err(f"ServiceMonitor {name}: apiVersion {sm.get('apiVersion')}")
        sel = sm["spec"]["selector"]["matchLabels"]
        svcs = [o for (k, _), o in objs.items()
                if k == "Service" and subset(sel, o["metadata"].get("labels", {}))]
        if len(svcs) != 1:
            err(f"ServiceMonitor {name} selects {len(svcs)} Services, want 1")
            continue
        svc = svcs[0]
        names = [p.get("name") for p in svc["spec"]["ports"]]
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("port") not in names:
                err(f"ServiceMonitor {name}: port {ep.get('port')!r} not on Service "
                    f"{svc['metadata']['name']}")
            if ep.get("path", "/metrics") != "/metrics":
                err(f"ServiceMonitor {name}: path {ep.get('path')}")
        job = svc["metadata"].get("labels", {}).get(sm["spec"].get("jobLabel", ""),
                                                     svc["metadata"]["name"])
        if job != "rrproxy":
            err(f"ServiceMonitor {name} gives job={job!r}; rules.yml expects job=\"rrproxy\"")


def check_config_keys(where: str, conf: dict, keys: set[str]) -> None:
    for k in conf:
        if k not in keys:
            err(f"{where}: unknown key {k!r} (rrproxy rejects it)")
    for k in ("connect-timeout", "idle-timeout", "drain-timeout", "health-timeout"):
        if k in conf:
            try:
                duration_s(conf[k])
            except ValueError as e:
                err(f"{where}: {k}: {e}")


def read_unit(path: Path) -> dict[str, list[str]]:
    """key -> values (a unit may repeat a key), all sections merged."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def check_systemd(config_keys: set[str]) -> None:
    conf_path = DEPLOY / "config" / "rrproxy.toml"
    conf = tomllib.loads(conf_path.read_text())
    check_config_keys("deploy/config/rrproxy.toml", conf, config_keys)
    unit = read_unit(DEPLOY / "systemd" / "rrproxy.service")

    def one(key):
        v = unit.get(key, [])
        return v[-1] if v else None

    # NotifyAccess=main is enough for an upgrade: the old front (MainPID)
    # sends MAINPID=<new>, and only then does the new one send READY=1.
    expect = {"Type": "notify", "NotifyAccess": "main",
              "KillSignal": "SIGTERM", "KillMode": "mixed",
              "Restart": "on-failure", "LimitNOFILE": "1048576",
              "NoNewPrivileges": "yes", "ProtectSystem": "strict",
              "ProtectHome": "yes", "PrivateTmp": "yes", "DynamicUser": "yes",
              "RuntimeDirectory": "rrproxy", "RuntimeDirectoryMode": "0700",
              "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
              "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
              "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
              "SystemCallArchitectures": "native", "LockPersonality": "yes",
              "MemoryDenyWriteExecute": "yes",
              "ExecStart": "/usr/local/bin/rrproxy --config /etc/rrproxy/rrproxy.toml"}
    for k, v in expect.items():
        if one(k) != v:
            err(f"rrproxy.service: {k}={one(k)}, want {v}")
    if "/bin/kill -HUP $MAINPID" not in unit.get("ExecReload", []):
        err("rrproxy.service: ExecReload does not send SIGHUP to $MAINPID")
    if any("USR2" in v for v in unit.get("ExecReload", [])):
        err("rrproxy.service: ExecReload sends SIGUSR2 (an upgrade); `systemctl reload` is the config reload")
    if "AF_UNIX" not in (one("RestrictAddressFamilies") or ""):
        err("rrproxy.service: workers need AF_UNIX (SCM_RIGHTS channel)")
    if one("PrivateUsers") == "yes":
        err("rrproxy.service: PrivateUsers breaks CAP_NET_BIND_SERVICE on the host network")
    stop = systemd_seconds(one("TimeoutStopSec") or "90")
    drain = duration_s(conf.get("drain-timeout", "30s"))
    if stop <= drain + KILL_GRACE_S:
        err(f"TimeoutStopSec {stop:g}s <= drain-timeout {drain:g}s + {KILL_GRACE_S}s")
    control = conf.get("control", "")
    if not control.startswith(f"/run/{one('RuntimeDirectory')}/"):
        err(f"config control {control!r} is not in RuntimeDirectory /run/{one('RuntimeDirectory')}")
    sock = read_unit(DEPLOY / "systemd" / "rrproxy.socket")
    listen_ports = {port_of(a) for a in conf.get("listen", ["0.0.0.0:8080"])}
    for ls in sock.get("ListenStream", []):
        if port_of(ls) not in listen_ports:
            err(f"rrproxy.socket ListenStream={ls} is not a `listen` port of the config")


def check_docker() -> str:
    """Returns the path the image installs the binary at."""
    df = (DEPLOY / "docker" / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", df)
    lines = [line for line in joined.splitlines() if line and not line.startswith("#")]

    def instr(name):
        return [line[len(name) + 1:].strip() for line in lines if line.split(" ", 1)[0] == name]

    bin_path = ""
    for c in instr("COPY"):
        parts = c.split()
        srcs = [p for p in parts[:-1] if not p.startswith("--")]
        if parts[0].startswith("--from="):
            if parts[-1].endswith("/rrproxy"):
                bin_path = parts[-1]
            continue
        for s in srcs:
            if s != "." and not (ROOT / s).exists():
                err(f"Dockerfile: COPY source {s} does not exist")
    if not bin_path:
        err("Dockerfile: no COPY --from=... of the rrproxy binary")
    try:
        entry = json.loads(instr("ENTRYPOINT")[-1])
    except (IndexError, json.JSONDecodeError):
        err("Dockerfile: ENTRYPOINT must be in exec form (a JSON array): rrproxy must be PID 1")
        return bin_path
    health = instr("HEALTHCHECK")[-1]
    # rrproxy is its own init as PID 1: an init wrapper would end the
    # container when the first front hands over in an upgrade.
    used = " ".join([*map(str, entry), *instr("RUN"), *instr("COPY")])
    for wrapper in ("tini", "dumb-init", "catatonit"):
        if re.search(rf"\b{wrapper}\b", used):
            err(f"Dockerfile: {wrapper}: rrproxy is its own init as PID 1, no wrapper")
    if entry[0] != bin_path:
        err(f"Dockerfile: ENTRYPOINT {entry[0]} is not {bin_path}")
    flags = dict(zip(entry[1::2], entry[2::2]))
    if flags.get("--metrics", "").split(":")[0] != "0.0.0.0":
        err("Dockerfile: ENTRYPOINT must set --metrics 0.0.0.0:PORT")
    # Both use the default control socket, or both name the same one.
    control = flags.get("--control")
    if control and f'"--control", "{control}"' not in health:
        err("Dockerfile: HEALTHCHECK does not use the ENTRYPOINT's --control socket")
    if not control and '"--control"' in health:
        err("Dockerfile: HEALTHCHECK names a --control socket the ENTRYPOINT does not set")
    if "USER root" in df or not instr("USER"):
        err("Dockerfile: runtime must run as a non-root USER")
    exposed = {int(p.split("/")[0]) for e in instr("EXPOSE") for p in e.split()}
    if exposed != {8080, port_of(flags.get("--metrics", ":0"))}:
        err(f"Dockerfile: EXPOSE {sorted(exposed)} is not proxy 8080 + metrics port")
    if "--locked" not in df or "--release" not in df:
        err("Dockerfile: build must be cargo build --release --locked")
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    for needed in ("Cargo.toml", "Cargo.lock", "src"):
        if needed in ignore:
            err(f"Dockerfile.dockerignore excludes {needed}")
    return bin_path


def cmd_consistency() -> int:
    keys = file_config_keys()
    check_kustomizations()
    bin_path = check_docker()
    check_kubernetes(k8s_objects(), keys, bin_path)
    check_systemd(keys)
    return finish("cross-file consistency")


def cmd_docker_argv() -> int:
    df = re.sub(r"\\\n\s*", " ", (DEPLOY / "docker" / "Dockerfile").read_text())
    copies = {}
    argv = []
    for line in df.splitlines():
        word, _, rest = line.partition(" ")
        if word == "COPY" and not rest.startswith("--from"):
            src, dst = rest.split()
            copies[dst] = src
        elif word == "ENTRYPOINT":
            argv = json.loads(rest)[1:]
        elif word == "CMD":
            argv += json.loads(rest)
    for a in argv:
        print(copies.get(a, a))
    return 0


def cmd_configmap_toml() -> int:
    for (kind, _), o in k8s_objects().items():
        if kind == "ConfigMap" and "rrproxy.toml" in o.get("data", {}):
            sys.stdout.write(o["data"]["rrproxy.toml"])
            return 0
    print("no ConfigMap with rrproxy.toml", file=sys.stderr)
    return 1


def cmd_query_all(url: str, rules_file: str) -> int:
    import urllib.parse
    import urllib.request

    exprs = [(r["record"], r["expr"]) for g in yaml.safe_load(Path(rules_file).read_text())["groups"]
             for r in g["rules"]]
    exprs += [(r["alert"], r["expr"]) for r in load_rules()]
    empty = []
    for name, expr in exprs:
        q = urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
                body = json.load(resp)
        except Exception as e:  # HTTP 400 carries the PromQL error
            detail = getattr(e, "read", lambda: b"")().decode(errors="replace")
            err(f"{name}: {e} {detail}")
            continue
        if body.get("status") != "success":
            err(f"{name}: {body.get('error')}")
        elif not body["data"]["result"] and name.startswith("grafana:"):
            empty.append(name)
    with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=5) as resp:
        groups = json.load(resp)["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    for r in loaded:
        if r.get("health") not in ("ok", "unknown") or r.get("lastError"):
            err(f"rule {r['name']}: {r.get('health')} {r.get('lastError')}")
    if len(loaded) != len(load_rules()):
        err(f"Prometheus loaded {len(loaded)} rules, rules.yml has {len(load_rules())}")
    print(f"  {len(exprs)} expressions evaluated, {len(loaded)} rules loaded and healthy")
    if empty:
        print(f"  no data yet (fine for counters of rare events): {', '.join(empty)}")
    return finish("live queries")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[1] == "metrics":
        return cmd_metrics()
    if len(argv) == 3 and argv[1] == "grafana":
        return cmd_grafana(argv[2])
    if len(argv) == 2 and argv[1] == "consistency":
        return cmd_consistency()
    if len(argv) == 2 and argv[1] == "docker-argv":
        return cmd_docker_argv()
    if len(argv) == 2 and argv[1] == "configmap-toml":
        return cmd_configmap_toml()
    if len(argv) == 4 and argv[1] == "query-all":
        return cmd_query_all(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
