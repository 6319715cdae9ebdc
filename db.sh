# Where each corpus lives on this machine.  A recipe reads its entry; a path
# that is relative is relative to the recipe dir (egs/<corpus>).
# mini_lime is synthesised by its stage 0 into this folder.
export MINI_LIME=${MINI_LIME:-db/mini_lime}
# Real corpora: point these at your copies.
export IEMOCAP=${IEMOCAP:-}
export CREMA_D=${CREMA_D:-}
export ESD=${ESD:-}
