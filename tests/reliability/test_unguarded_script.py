"""A script that starts deepfield's worker processes without a ``__main__`` guard: the workers
re-run it as they start. It must end at once with the fix named, leaving no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time


def test_an_unguarded_script_with_workers_ends_with_the_fix_and_no_orphans(tmp_path):
    script = tmp_path / "survey.py"
    script.write_text(textwrap.dedent("""
        from deepfield.data.galaxies import simulate_galaxies

        store = simulate_galaxies("survey", 120, size=16, seed=1, workers=2, batch=20, progress=False)
        print("rows", len(store))
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # in a session of its own, so that its workers can be found after it ends (they share its session id)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    stdout, stderr = proc.communicate(timeout=180)
    proc.stdout, proc.stderr = stdout, stderr
    assert proc.returncode == 1 and "rows" not in proc.stdout
    assert 'if __name__ == "__main__":' in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "survey").exists()  # no half-written store
    time.sleep(1)  # a worker being terminated may take a moment to go
    sessions = subprocess.run(["ps", "-eo", "sid=,stat=,args="], capture_output=True, text=True).stdout.splitlines()
    # (a zombie, an exited process its dead parent never reaped, holds no resources)
    sessions = [line for line in sessions if line.split()[0] == str(proc.pid) and not line.split()[1].startswith("Z")]
    assert sessions == []  # no worker left running
    # guarded, the same script runs
    script.write_text("if __name__ == '__main__':\n" + textwrap.indent(script.read_text(), "    "))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=env)
    assert proc.returncode == 0 and "rows 120" in proc.stdout, proc.stderr[-2000:]
