"""Print the README's benchmark section from benchmarks/results/*.md (the numbers are never typed by hand).

    python benchmarks/readme_tables.py > /tmp/tables.md
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = [
    ("compression", "Compression: held-out MSE (PCA vs dense AE vs conv AE)",
     "python benchmarks/compression.py --galaxy-epochs 10  # then --only iris digits spectra",
     "MSE in units of the training set's per-band pixel variance, on the held-out split. 'vs truth': "
     "reconstructions of the noisy input against the simulator's noiseless truth; 'noise floor': the noisy "
     "input itself against the truth."),
    ("simulate", "Simulator throughput (64x64 stamps)", "python benchmarks/simulate.py --n 5000 --size 64 --repeat 2",
     "deepfield's rows also draw the truth and PSF stamps and write the store; the plain loops draw only the "
     "noisy image and write nothing."),
    ("train_throughput", "Conv AE training throughput (64x64, batch 64, 2.1M parameters)",
     "python benchmarks/train_throughput.py --steps 20", "No GPU was lent to this development machine."),
]

for name, title, command, note in SECTIONS:
    table = RESULTS / f"{name}.md"
    if not table.is_file():
        continue
    body = table.read_text().strip()
    print(f"### {title}\n\n`{command}`\n\n{body}\n\n{note}\n")
