# Where each corpus lives on this machine.  A recipe reads its entry; a path
# that is relative is relative to the recipe dir (egs/<corpus>).
# mini_lime is synthesised by its stage 0 into this folder.
export MINI_LIME=${MINI_LIME:-db/mini_lime}
# Real corpora: point these at your copies (the folder the release unpacks to, or the one above it).
export IEMOCAP=${IEMOCAP:-}          # IEMOCAP_full_release (Session1 ... Session5)
export MSP_PODCAST=${MSP_PODCAST:-}  # MSP-PODCAST-<version> (Labels/, Audios/, Transcripts/)
export CREMA_D=${CREMA_D:-}          # CREMA-D (AudioWAV/, processedResults/)
export RAVDESS=${RAVDESS:-}          # Audio_Speech_Actors_01-24 (Actor_01 ... Actor_24)
export ESD=${ESD:-}                  # Emotion Speech Dataset (0001 ... 0020)
export EMODB=${EMODB:-}              # EmoDB's download (wav/)
export EMO_EMILIA=${EMO_EMILIA:-}    # the C2SER repository (Emo-Emilia/Emo-Emilia-ALL.jsonl, Emo-Emilia/wav/)
export EMOBOX=${EMOBOX:-}            # the EmoBox repository (data/<dataset>/, and downloads/<dataset>/ with the audio)
export MELD=${MELD:-}                # MELD.Raw (train_sent_emo.csv, train_splits/, ...)
