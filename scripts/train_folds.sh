#!/usr/bin/env bash
# Train every fold of a config, one `rsna train` call per fold (each resumable on its own),
# then score the out-of-fold predictions and write the submission.
#   scripts/train_folds.sh baseline [N_FOLDS]      (a shipped config by name, or a TOML path)
set -euo pipefail
config="$1"
folds="${2:-5}"
for ((k = 0; k < folds; k++)); do
    rsna train "$config" --fold "$k"
done
rsna evaluate "$config"
rsna predict "$config"
