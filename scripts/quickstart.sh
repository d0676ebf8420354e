#!/usr/bin/env bash
# Set up, train a router on the default public data, and route a few prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
echo "Training on the public RouteLLM outcomes (MMLU + MT-Bench): cheap = Mixtral-8x7B, strong = GPT-4-1106,"
echo "the one pair graded on the same prompts there; dollars use the gpt-4o-mini / gpt-4o list prices."
echo "It shows the pipeline, not a router for your traffic: train on your own log with --log."
echo "Goal: keep >= 95% of the strong model's quality, certified at risk 0.05 (docs/guarantee.md); on a small"
echo "log nothing may be certifiable: then every request goes strong and router-train prints the rows it would need."
# A demo, kept under 5 minutes on 2 cores: one candidate head (the usual winner on this data) instead
# of four, and a spread sample of 6,000 of the 14k public prompts (embedding them is most of the time).
# Drop --sample-rows for the full-data router README's benchmarks ran on; drop --heads to try all four.
echo "Demo settings: 6,000 of the 14k prompts (--sample-rows) and one candidate head; see README for the full run."
router-train --out artifacts/router --quality-floor 0.95 --risk 0.05 --heads logreg_c0.1 --sample-rows 6000 --no-progress
python -m router_model info --model-dir artifacts/router | grep '^goal:'
python -m router_model route --model-dir artifacts/router --table \
  "Classify the sentiment of this review as positive or negative: 'Arrived late but works great.'" \
  "Extract the invoice number and total from: Invoice #4471, total due EUR 312.50 by 1 May." \
  "Prove that every finite integral domain is a field, then generalise the argument to division rings." \
  "Implement a lock-free multi-producer multi-consumer queue in C++ and explain the memory ordering of each atomic."
