"""The deployment material in deploy/ is checked, with the real tools where they are installed.

systemd-analyze (verify, offline security score), postconf (unknown parameters in the Postfix
snippets), doveconf, kubectl kustomize and the gateway's own check-config run when present;
the structural checks (hardening keys, non-root users, PROXY protocol, labels) always run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewaySettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "passerelle.service"
K8S = DEPLOY / "kubernetes"
DRAIN_DEFAULT = GatewaySettings(hostname="x").drain_seconds


def _run(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60,
                          check=False, **kwargs)


# --- systemd -------------------------------------------------------------------------------


def unit_entries() -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.setdefault(key, []).append(value)
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return float(match[1]) * (60 if match[2] == "min" else 1)


def test_unit_sections_and_command() -> None:
    entries = unit_entries()
    assert set(entries) == {"Unit", "Service", "Install"}
    service = entries["Service"]
    assert service["ExecStart"] == [
        "/usr/local/bin/gateway run --config /etc/passerelle/gateway.toml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert entries["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize(("key", "value"), [
    ("User", "passerelle"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("NoNewPrivileges", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("LimitCORE", "0"),
    ("MemorySwapMax", "0"),
    ("LimitMEMLOCK", "infinity"),
    ("CapabilityBoundingSet", ""),
    ("ReadOnlyPaths", "/etc/passerelle"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("LockPersonality", "yes"),
    ("RestrictRealtime", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("UMask", "0077"),
    ("Restart", "on-failure"),
    ("RestartSec", "2"),
    ("KillSignal", "SIGTERM"),
    ("KillMode", "mixed"),
])
def test_unit_hardening(key: str, value: str) -> None:
    assert unit_entries()["Service"].get(key) == [value]


def test_unit_limits_and_stop_budget() -> None:
    service = unit_entries()["Service"]
    assert "@system-service" in service["SystemCallFilter"]
    # No capability is granted unless the commented port-25 lines are enabled.
    assert "AmbientCapabilities" not in service
    assert seconds(service["TimeoutStopSec"][0]) > DRAIN_DEFAULT
    assert "DynamicUser" not in service  # a system user owns the keys (see the unit's header)


def _unit_with_real_binary(tmp_path: Path) -> Path:
    gateway = shutil.which("gateway") or sys.executable
    unit = tmp_path / "passerelle.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/gateway", gateway))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # ExecStart must exist for verify: the installed gateway stands in for /usr/local/bin.
    result = _run("systemd-analyze", "verify", _unit_with_real_binary(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr and "Unknown section" not in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_exposure_score(tmp_path: Path) -> None:
    unit = _unit_with_real_binary(tmp_path)
    result = _run("systemd-analyze", "security", "--offline=true", unit)
    if "--offline" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip("systemd-analyze security has no --offline here")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    assert float(match[1]) <= 2.0  # measured 1.5 with systemd 252


def test_sysusers_and_tmpfiles() -> None:
    sysusers = [ln for ln in (DEPLOY / "systemd" / "passerelle.sysusers").read_text()
                .splitlines() if ln and not ln.startswith("#")]
    assert sysusers and sysusers[0].split()[:2] == ["u", "passerelle"]
    assert sysusers[0].split()[-1] == "/usr/sbin/nologin"
    tmpfiles = [ln.split() for ln in (DEPLOY / "systemd" / "passerelle.tmpfiles").read_text()
                .splitlines() if ln and not ln.startswith("#")]
    assert ["d", "/etc/passerelle", "0750", "root", "passerelle", "-"] in tmpfiles


# --- container -----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_gateway_dockerfile() -> None:
    steps = dockerfile_instructions(DEPLOY / "container" / "Dockerfile")
    froms = [arg for word, arg in steps if word == "FROM"]
    assert all(f.startswith("python:3.11-slim") for f in froms)
    users = [arg for word, arg in steps if word == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    # The last stage runs as that user: no USER root after it.
    assert all(u.split(":")[0] not in {"0", "root"} for u in users)
    assert not any(word == "ADD" for word, _ in steps)  # no ADD of URLs or archives
    assert ("ENTRYPOINT", '["gateway"]') in steps
    cmd = [arg for word, arg in steps if word == "CMD"][-1]
    assert cmd.startswith('["run", "--config", "/etc/passerelle/gateway.toml"')
    # The exec form everywhere at run time: no shell is needed.
    health = [arg for word, arg in steps if word == "HEALTHCHECK"]
    assert all("CMD [" in h for h in health)
    ignore = (DEPLOY / "container" / "Dockerfile.dockerignore").read_text()
    assert "**/pki" in ignore and "**/*.key" in ignore


def test_standin_dockerfiles() -> None:
    for name in ("postfix", "dovecot"):
        steps = dockerfile_instructions(DEPLOY / "container" / name / "Dockerfile")
        assert [arg for word, arg in steps if word == "FROM"] == ["debian:bookworm-slim"]
        assert not any(word == "ADD" for word, _ in steps)


def load_yaml(path: Path) -> list[Any]:
    yaml = pytest.importorskip("yaml")
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 7
    for path in files:
        assert load_yaml(path), path


def test_compose_gateway_hardening() -> None:
    (compose,) = load_yaml(DEPLOY / "container" / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"gateway", "mx-apicrypt", "mx-mssante", "mailstore"}
    gw = services["gateway"]
    assert gw["read_only"] is True
    assert gw["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in gw["security_opt"]
    assert gw["ulimits"]["core"] == 0
    assert gw["mem_limit"] == gw["memswap_limit"]
    assert "./pki:/etc/passerelle:ro" in gw["volumes"]
    assert float(gw["stop_grace_period"].rstrip("s")) > DRAIN_DEFAULT
    assert gw["build"]["dockerfile"] == "deploy/container/Dockerfile"
    assert (DEPLOY / "container" / gw["build"]["context"] / "pyproject.toml").is_file()
    for name in ("mx-apicrypt", "mx-mssante", "mailstore"):
        assert services[name]["network_mode"] == "service:gateway"
        for volume in services[name].get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("./") and host != "./pki":
                assert (DEPLOY / "container" / host).is_file(), volume
            if host == "./pki":
                assert volume.endswith(":ro")


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI missing")
def test_docker_compose_config() -> None:
    result = _run("docker", "compose", "-f", DEPLOY / "container" / "compose.yaml", "config",
                  "--quiet")
    if result.returncode != 0 and ("unknown command" in result.stderr
                                   or "is not a docker command" in result.stderr
                                   or "unknown shorthand flag" in result.stderr):
        pytest.skip("docker compose plugin missing")
    assert result.returncode == 0, result.stderr


# --- Postfix and Dovecot -------------------------------------------------------------------


POSTFIX_SETS = [
    DEPLOY / "postfix",
    DEPLOY / "container" / "postfix" / "apicrypt",
    DEPLOY / "container" / "postfix" / "mssante",
]


@pytest.mark.skipif(shutil.which("postconf") is None, reason="postconf missing")
@pytest.mark.parametrize("folder", POSTFIX_SETS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_postfix_snippets_known_parameters(folder: Path, tmp_path: Path) -> None:
    """postconf warns about every parameter Postfix does not know, in main.cf and in master.cf
    -o overrides: a typo would be silently ignored by a running Postfix."""
    for name in ("main.cf", "master.cf"):
        shutil.copy(folder / name, tmp_path / name)
    for flag in ("-n", "-M", "-P"):
        result = _run("postconf", "-c", tmp_path, flag)
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr, result.stderr


def test_postfix_front_snippet_facts() -> None:
    main = (DEPLOY / "postfix" / "main.cf").read_text()
    master = (DEPLOY / "postfix" / "master.cf").read_text()
    assert "smtpd_tls_security_level = encrypt" in main
    assert "smtpd_tls_req_ccert=yes" in master
    # The re-injection service the gateway relays to listens on loopback only, with TLS.
    assert re.search(r"^127\.0\.0\.1:10026 +inet", master, re.M)
    assert "smtpd_tls_security_level=encrypt" in master
    # Mode B is the commented alternative to mode A (one smtpd, one way to reach the gateway).
    assert not re.search(r"^\s+-o smtpd_proxy_filter", master, re.M)
    assert "#   -o smtpd_proxy_filter=127.0.0.1:2587" in master
    readme = (DEPLOY / "postfix" / "README.md").read_text()
    # the gateway side of mode B: plain SMTP from Postfix's proxy, on loopback only
    assert 'listen = "127.0.0.1:2587"' in readme and "require_starttls = false" in readme
    assert "planned" not in readme
    assert "speed_adjust" in readme


@pytest.mark.skipif(shutil.which("doveconf") is None, reason="doveconf missing")
def test_dovecot_config_parses() -> None:
    result = _run("doveconf", "-c", DEPLOY / "container" / "dovecot" / "dovecot.conf", "-n")
    assert result.returncode == 0, result.stderr
    assert "lmtp" in result.stdout


# --- Kubernetes ----------------------------------------------------------------------------


def k8s(kind: str) -> dict[str, Any]:
    docs = [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in load_yaml(p)]
    (found,) = [d for d in docs if d["kind"] == kind]
    assert isinstance(found, dict)
    return found


def test_deployment_security() -> None:
    dep = k8s("Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 3
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert container["resources"]["limits"]["memory"]
    assert container["args"][:3] == ["run", "--config", "/etc/passerelle/config/gateway.toml"]
    assert all(m["readOnly"] is True for m in container["volumeMounts"])
    keys = [v for v in spec["volumes"] if "secret" in v]
    assert keys and keys[0]["secret"]["secretName"] == "passerelle-keys"
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    probes = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "startupProbe")}
    assert probes == {"/readyz", "/healthz"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["tcpSocket"]["port"] in ports


def test_kubernetes_config_agrees_with_manifests() -> None:
    config = tomllib.loads((K8S / "gateway.toml").read_text())
    dep = k8s("Deployment")
    spec = dep["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config["networks"]["apicrypt"]["listen"].endswith(f":{ports['smtp-apicrypt']}")
    assert config["networks"]["mssante"]["listen"].endswith(f":{ports['smtp-mssante']}")
    assert config["gateway"]["metrics_listen"].endswith(f":{ports['metrics']}")
    drain = config["gateway"].get("drain_seconds", DRAIN_DEFAULT)
    assert spec["terminationGracePeriodSeconds"] > drain
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    for table in (config["gateway"], *config["networks"].values()):
        for key, values in table.items():
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, str) and value.startswith("/etc/passerelle/"):
                    assert any(value == m or value.startswith(m + "/") for m in mounts), key
    svc = k8s("Service")
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"smtp-apicrypt", "smtp-mssante"}
    assert svc["spec"]["externalTrafficPolicy"] == "Local"


def test_kubernetes_config_is_valid_but_for_missing_files() -> None:
    result = _run(sys.executable, "-m", "gateway", "check-config", K8S / "gateway.toml",
                  env={**os.environ, "PYTHONPATH": str(ROOT)})
    output = result.stdout + result.stderr
    problems = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert result.returncode == 2 and problems, output
    # Every key is known and well-formed; only the mounted files are absent on this machine.
    assert all(re.search(r"(file|folder) not found: /etc/passerelle/", p) for p in problems), \
        problems


def test_pdb_hpa_service_networkpolicy_select_the_deployment() -> None:
    dep = k8s("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb, hpa, svc, netpol = (k8s(k) for k in (
        "PodDisruptionBudget", "HorizontalPodAutoscaler", "Service", "NetworkPolicy"))
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == 70
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1
    # Ingress only to the SMTP ports (and metrics from monitoring), egress to port 25 and DNS.
    in_ports = {p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"]}
    assert in_ports == {2525, 2587, 9108}
    out_ports = {p["port"] for rule in netpol["spec"]["egress"] for p in rule["ports"]}
    assert out_ports == {25, 53}


def test_kustomization_lists_every_manifest() -> None:
    (kust,) = load_yaml(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == manifests
    assert kust["configMapGenerator"][0]["files"] == ["gateway.toml"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl missing")
def test_kubectl_kustomize_builds() -> None:
    result = _run("kubectl", "kustomize", K8S)
    assert result.returncode == 0, result.stderr
    # The generated ConfigMap name (with its hash) is what the Deployment mounts.
    names = re.findall(r"name: (passerelle-config-\w+)", result.stdout)
    assert len(names) >= 2 and len(set(names)) == 1


# --- HAProxy -------------------------------------------------------------------------------


def haproxy_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in (DEPLOY / "haproxy" / "haproxy.cfg").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not raw.startswith((" ", "\t")):
            current = sections.setdefault(line.strip(), [])
        else:
            current.append(line.strip())
    return sections


def test_haproxy_backends_send_proxy_v2_and_check() -> None:
    sections = haproxy_sections()
    backends = {k: v for k, v in sections.items() if k.startswith("backend ")}
    assert len(backends) == 2
    for name, lines in backends.items():
        defaults = " ".join(ln for ln in lines if ln.startswith("default-server"))
        servers = [ln for ln in lines if ln.startswith("server ")]
        assert len(servers) >= 2, name
        for server in servers:
            options = server + " " + defaults
            assert "send-proxy-v2" in options.split(), server
            assert "check" in options.split(), server
        assert any(ln.startswith("option smtpchk") for ln in lines), name
    assert any("mode tcp" in ln for ln in sections["defaults"])
    assert "proxy_protocol = true" in (DEPLOY / "haproxy" / "haproxy.cfg").read_text()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy missing")
def test_haproxy_config_check() -> None:
    result = _run("haproxy", "-c", "-f", DEPLOY / "haproxy" / "haproxy.cfg")
    assert result.returncode == 0, result.stdout + result.stderr


# --- documentation -------------------------------------------------------------------------


def test_deploy_doc_links_exist() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for ref in re.findall(r"`((?:deploy|docs)/[\w./-]+)`", text):
        assert (ROOT / ref.rstrip("/")).exists(), ref
