"""A careless or hostile user at the command line: each case of the threat model (docs/reliability.md, "Hostile
inputs") through the real `rlhf-ray` executable. Each ends with exit 1 and one line on stderr, `error: ...`, naming
what is wrong and where; none prints a traceback, and none writes or deletes anything in the run directory."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("rlhf-ray"))
PROMPTS = "configs/data/warm_prompts.jsonl"
REWARD = "reward.functions=[{function: configs/tiny/rewards.py:target_token_frac}]"
MAX_RSS = 2 << 30  # a refusal is made before anything big is read or allocated: under 2 GB, the bound


def cli(*args: str, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The executable's exit, output and peak memory (`maxrss`, bytes: the largest of it and the processes it
    waited for, from wait4's rusage; Popen.wait would reap it without). Standard input is closed unless `stdin`
    feeds it (a "y" to a prompt)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as feed:
        feed.write((stdin or "").encode())
        feed.seek(0)
        proc = subprocess.Popen([EXE, *args], cwd=ROOT, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL if stdin is None else feed)
        deadline = time.monotonic() + timeout
        while (waited := os.wait4(proc.pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise subprocess.TimeoutExpired(proc.args, timeout)
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(waited[1])  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))
    done.maxrss = waited[2].ru_maxrss << 10  # Linux reports KiB
    return done


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The one stderr line of a refusal (library warnings aside), checked for each needle, made in bounded memory."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.maxrss < MAX_RSS, f"peak memory {proc.maxrss >> 20} MiB"
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "fns.py").write_text("def one(responses):\n    return [1.0] * len(responses)\n")
    (tmp_path / "ok.yaml").write_text(f"stages: [ppo]\ndata:\n  prompts:\n    path: {PROMPTS}\n")
    return tmp_path


# (name, config text or None for ok.yaml, extra arguments, what the one line must say)
CASES = [
    ("name escapes", None, ["name=.."], ["name: '..' is not a run name"]),
    ("name absolute", None, ["name=/etc"], ["name: '/etc' is not a run name"]),
    ("labeler typo", None, ["stages=[sft,label,dpo]", "data.demonstrations.path=configs/data/tiny_demos.jsonl",
                            "label.labeler=warm_labelrs.py:vader_warmth"],
     ["label.labeler: reward function 'warm_labelrs.py:vader_warmth': no such file"]),
    ("reward function typo", None, ["reward.functions=[{function: 'configs/tiny/rewards.py:no_such'}]"],
     ["reward.functions[0].function: ", "has no function 'no_such'"]),
    ("gold typo", None, [REWARD, "data.prompts.eval_fraction=0.2", "ppo.gold=nowhere.py:judge"],
     ["ppo.gold: reward function 'nowhere.py:judge': no such file"]),
    ("bad signature", None, ["reward.functions=[{function: 'FILES/fns.py:one'}]"],
     ["cannot take the call fn(prompts, responses, **columns)"]),
    ("negative kl", None, [REWARD, "ppo.kl_coef=-5"], ["ppo.kl_coef: must be >= 0, got -5.0"]),
    ("infinite lr", None, [REWARD, "train.lr=.inf"], ["train.lr: must be a finite number, got inf"]),
    ("no epochs", None, [REWARD, "ppo.epochs=0"], ["ppo.epochs: must be > 0, got 0"]),
    ("negative clip", None, [REWARD, "ppo.clip_eps=-1"], ["ppo.clip_eps: must be > 0"]),
    ("negative beta", None, [REWARD, "dpo.beta=-1"], ["dpo.beta: must be > 0"]),
    ("negative kv cache", None, [REWARD, "rollout.kv_cache_mb=-1"], ["rollout.kv_cache_mb: must be in [1,"]),
    ("port", None, [REWARD, "cluster.metrics_export_port=99999"], ["must be in [1, 65535], got 99999"]),
    ("nan timeout", None, [REWARD, "cluster.call_timeout_s=.nan"], ["cluster.call_timeout_s: must be a finite"]),
    ("no stages", None, [REWARD, "stages=[]"], ["stages: list at least one stage"]),
    ("huge batch", None, [REWARD, "rollout.batch_size=1000000000000"], ["rollout.batch_size: must be in [1,"]),
    ("negative prompt length", None, [REWARD, "data.max_prompt_len=-10", "data.truncation=truncate"],
     ["data.max_prompt_len: must be in [1,"]),
    ("role typo", None, [REWARD, "cluster.roles.genrator.count=1"], ["cluster.roles.genrator: unknown role; did you "
                                                                     "mean generator?"]),
    ("empty config", "", [], ["the config is empty"]),
    ("binary config", b"\x80\x04\x95\x00PK\x03\x04", [], ["not a YAML text file (byte 0x80"]),
    ("alias bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
     [], ["expands to 111,111 values once its aliases are expanded"]),
    ("deep nesting", "a: " + "[" * 5000 + "]" * 5000 + "\n", [], ["nested too deeply to read"]),
    ("invalid utf-8 dataset", None, [REWARD, "data.prompts.path=FILES/latin1.jsonl", "data.skip_malformed=true"],
     ["data.prompts.path: ", "no usable prompts rows", "not UTF-8 text (byte 0xe9"]),
    ("fake parquet", None, [REWARD, "data.prompts.path=FILES/rows.parquet"], ["not a readable Parquet file"]),
]


@pytest.mark.parametrize("name,text,extra,needles", CASES, ids=[c[0] for c in CASES])
def test_refused_before_anything_is_written(files, name, text, extra, needles):
    (files / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    (files / "rows.parquet").write_text(json.dumps({"prompt": "hi"}) + "\n")
    config = files / "ok.yaml"
    if text is not None:
        config = files / "c.yaml"
        config.write_bytes(text if isinstance(text, bytes) else text.encode())
    run_dir = files / "run"
    args = [a.replace("FILES", str(files)) for a in extra]
    refused(cli("run", str(config), *args, "--run-dir", str(run_dir)), *needles)
    assert not run_dir.exists()


def test_a_reward_function_returning_bools_stops_the_run_with_one_line(tmp_path):
    """Found only when it runs (on the reward-function actor): the run stops at its first step, naming the
    function and rows, with no traceback."""
    (tmp_path / "verdict.py").write_text("def verdict(prompts, responses):\n    return [True] * len(responses)\n")
    proc = cli("run", "configs/tiny/ppo.yaml", f"reward.functions=[{{function: '{tmp_path}/verdict.py:verdict'}}]",
               "ppo.steps=1", "rollout.batch_size=4", "ppo.mini_batch_size=16",
               "train.micro_batch_size=16", "ppo.advantage=rloo", "--run-dir", str(tmp_path / "run"), timeout=900)
    refused(proc, "score: reward functions: raised RewardFunctionError: reward function verdict must return a real "
                  "number for every response (not a string, bool or None); got row 0: True")


def test_a_second_run_on_a_held_run_directory_is_refused_before_it_writes(files):
    """The holder is a real process holding RUN_DIR/.lock; the second `run --force` would delete its work."""
    run_dir = files / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom rlhf_ray.runtime.lock import RunLock\n"
                               "lock = RunLock(sys.argv[1], 'rlhf-ray run first.yaml').acquire()\n"
                               "print('held', flush=True)\ntime.sleep(120)", str(run_dir)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (run_dir / "final").mkdir()
        before = sorted(p.name for p in run_dir.iterdir())
        refused(cli("run", str(files / "ok.yaml"), REWARD, "--run-dir", str(run_dir), "--force"),
                f"{run_dir} is in use by pid {holder.pid} on ", "(rlhf-ray run first.yaml)")
        assert sorted(p.name for p in run_dir.iterdir()) == before  # no config.yaml, nothing deleted
    finally:
        holder.kill()
        holder.wait()


def test_job_api_cases(files):
    """The token in clear (refused before any connection), a NaN timeout given to submit (refused before
    anything is uploaded), and a dashboard that answers 401 (one line, not the client's traceback)."""
    import http.server
    import threading

    refused(cli("status", "raysubmit_x", "--address", "http://10.255.255.1:8265"),
            "--address http://10.255.255.1:8265: plain http")
    refused(cli("submit", str(files / "ok.yaml"), REWARD, "cluster.call_timeout_s=.nan", "--address",
                "http://127.0.0.1:9"), "cluster.call_timeout_s: must be a finite number, got nan")

    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refused(cli("status", "raysubmit_x", "--address", f"http://127.0.0.1:{server.server_port}"),
                "the job API asks for the cluster token (401)")
    finally:
        server.shutdown()
        server.server_close()


def test_a_metrics_file_cut_short_or_corrupt(files):
    run_dir = files / "run"
    run_dir.mkdir()
    rows = [json.dumps({"stage": "ppo", "step": i, "reward_mean": 0.1 * i}) for i in (1, 2)]
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + '\n{"stage": "ppo", "st')
    proc = cli("report", str(run_dir))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{run_dir / 'metrics.jsonl'}:3: last line cut short" in proc.stderr
    (run_dir / "metrics.jsonl").write_text(rows[0] + "\nnot json\n" + rows[1] + "\n")
    refused(cli("report", str(run_dir)), f"{run_dir / 'metrics.jsonl'}:2: ")


# Addresses (issue 26, finding 1) and Ray's temp dir (finding 7): refused before anything connects or is written.
ATTACK = "http://10.1.2.3:8265\\@127.0.0.1:8265"  # urlsplit reads 127.0.0.1, requests connects to 10.1.2.3
ADDRESS_CASES = [
    ("job api attack", ["status", "raysubmit_x", "--address", ATTACK], ["--address http://10.1.2.3:8265\\@127.0.0.1",
                                                                        "a user name or password ('@')"]),
    ("logs attack", ["logs", "raysubmit_x", "--follow", "--address", ATTACK, "--insecure-http"],
     ["a user name or password ('@')"]),
    ("run gcs", ["run", "configs/tiny/sft.yaml", "--address", "10.1.2.3:6379"],
     ["--address 10.1.2.3:6379: Ray's protocol to another host without TLS (RAY_USE_TLS is not 1) carries the "
      "cluster token", "--insecure-http"]),
    ("run client", ["run", "configs/tiny/sft.yaml", "--address", "ray://10.1.2.3:10001"],
     ["--address ray://10.1.2.3:10001: Ray's protocol to another host"]),
    ("run config address", ["run", "configs/tiny/sft.yaml", "cluster.address=10.1.2.3:6379"],
     ["cluster.address 10.1.2.3:6379: Ray's protocol to another host"]),
    ("run attack", ["run", "configs/tiny/sft.yaml", "--address", "127.0.0.1:6379\\@10.1.2.3:6379"],
     ["a user name or password ('@')"]),
    ("run dotted name", ["run", "configs/tiny/sft.yaml", "--address", "127.0.0.1.evil:6379"],
     ["--address 127.0.0.1.evil:6379: Ray's protocol to another host"]),
]


@pytest.mark.parametrize("name,argv,needles", ADDRESS_CASES, ids=[c[0] for c in ADDRESS_CASES])
def test_addresses_are_refused_before_anything_connects(tmp_path, monkeypatch, name, argv, needles):
    for key in ("RAY_ADDRESS", "RAY_USE_TLS", "RLHF_RAY_INSECURE_HTTP"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    run_dir = tmp_path / "run"
    refused(cli(*argv, *(["--run-dir", str(run_dir)] if argv[0] == "run" else []), timeout=120), *needles)
    assert not run_dir.exists()


def test_a_shared_ray_temp_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RLHF_RAY_TMP", str(shared))
    refused(cli("run", "configs/tiny/sft.yaml", "--run-dir", str(tmp_path / "run"), timeout=120),
            f"RLHF_RAY_TMP {shared} is writable by group or others (mode 777)")
    assert not (tmp_path / "run").exists() and list(shared.iterdir()) == []


@pytest.mark.parametrize("extra,message", [
    (["data.prompts.eval_fraction=0.2", REWARD, "ppo.gold=FILES/syntax.py:judge"],
     "ppo.gold: importing FILES/syntax.py:judge raised SyntaxError: "),
    (["stages=[label]", "label.labeler=rlhf_ray_no_such_module:judge"],
     "label.labeler: reward function 'rlhf_ray_no_such_module:judge': cannot import 'rlhf_ray_no_such_module'"),
], ids=["gold-syntax-error", "labeler-missing-module"])
def test_validate_and_submit_refuse_what_run_refuses(files, extra, message):
    """`validate` passed these and `submit` sent them off (the job failed on the cluster); now all three make the
    same checks before Ray, with the same line. `submit`'s address is a closed port: it never gets that far."""
    (files / "syntax.py").write_text("def judge(prompts, responses:\n    return []\n")
    args = [a.replace("FILES", str(files)) for a in extra]
    lines = {command: refused(cli(command, str(files / "ok.yaml"), *args, *flags, timeout=120),
                              message.replace("FILES", str(files)))
             for command, flags in [("run", ["--run-dir", str(files / "run")]), ("validate", []),
                                    ("submit", ["--address", "http://127.0.0.1:9"])]}
    assert lines["run"] == lines["validate"] == lines["submit"]
    assert not (files / "run").exists()


def test_a_model_folder_with_its_own_code_is_refused_though_stdin_says_yes(files):
    """transformers asks "Do you wish to run the custom code? [y/N]" for a folder whose config.json maps auto
    classes to its own modules for a model type it does not know; a "y" on stdin ran the folder's Python. Every
    command refuses it before loading anything, and reads no answer."""
    folder = files / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "rlhf_ray_evil", "auto_map": {
        "AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(f"open({str(files / 'ran')!r}, 'w').close()\n")
    message = (f"model.policy: {folder} asks to run its own code (auto_map AutoConfig, AutoModelForCausalLM; "
               f"model_type 'rlhf_ray_evil'); set model.trust_remote_code=true if you trust it")
    for command, config, flags in [("validate", "sft", []), ("run", "sft", ["--run-dir", str(files / "run")]),
                                   ("sample", "sample", ["--run-dir", str(files / "run")])]:
        proc = cli(command, f"configs/tiny/{config}.yaml", f"model.policy={folder}", *flags, stdin="y\n",
                   timeout=120)
        refused(proc, message if command != "sample" else f"{folder} asks to run its own code")
        assert "[y/N]" not in proc.stdout + proc.stderr and not (files / "ran").exists()


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    path.write_bytes(head)
    os.truncate(path, size)  # no disk used: the file system reads zeros back
    return path


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


# Files that exhaust memory or hang a reader, each where a run reads one: (name, what to plant in the test's folder
# F and the config it returns, extra arguments, what the one line must say). FILES in a needle is F.
FILE_CASES = [
    ("config fifo", lambda f: _fifo(f / "c.yaml"), [], "FILES/c.yaml: not a regular file (a FIFO)"),
    ("config device", lambda f: Path("/dev/zero"), [], "/dev/zero: not a regular file (a character device)"),
    ("config 600 MB", lambda f: _sparse(f / "c.yaml", 600 << 20, b"name: x\n"), [],
     "FILES/c.yaml: 629,145,600 bytes; a config is at most 1,048,576"),
    ("name of a million characters", lambda f: _sparse(f / "c.yaml", 1_000_007, b"name: " + b"n" * 1_000_000 + b"\n"), [],
     "name: 1,000,000 characters; at most 100"),
    ("dataset of one endless line", lambda f: _sparse(f / "p.jsonl", 3 << 30) and f / "ok.yaml",
     [REWARD, "data.prompts.path=FILES/p.jsonl"], "data.prompts.path: FILES/p.jsonl: row 1: longer than 16,777,216"),
    ("lock fifo", lambda f: _fifo(f / "run" / ".lock") and f / "ok.yaml", [REWARD],
     "FILES/run/.lock is not a regular file, not a lock this program writes"),
    ("lock device", lambda f: _link(f / "run" / ".lock", "/dev/zero") and f / "ok.yaml", [REWARD],
     "FILES/run/.lock is a symbolic link, not a lock this program writes"),
    ("lock 3 GB", lambda f: _sparse(f / "run" / ".lock", 3 << 30) and f / "ok.yaml", [REWARD],
     "FILES/run/.lock is more than 4096 bytes, not a lock this program writes"),
]


@pytest.mark.parametrize("name,plant,extra,needle", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_files_that_hang_or_exhaust_a_reader_are_refused_in_bounded_memory(files, name, plant, extra, needle):
    """Each refused in one line, in under 2 GB (cli's maxrss) and without waiting on a writer (the timeout), with
    the run directory as it was."""
    (files / "run").mkdir()
    config = plant(files)
    before = sorted(p.name for p in (files / "run").iterdir())
    args = [a.replace("FILES", str(files)) for a in extra]
    refused(cli("run", str(config), *args, "--run-dir", str(files / "run"), timeout=120),
            needle.replace("FILES", str(files)))
    assert sorted(p.name for p in (files / "run").iterdir()) == before
