"""The `local` package of EmoReason and its pinned dependency stack.

fairseq2 0.8.1 pins torch 2.9.1 exactly, which fixes torchaudio 2.9.1 and
transformers 4.57.x; everything else is pinned to a range known to work with
that stack.  Why each dependency is here is written in README.md.
"""
from setuptools import find_packages, setup

install_requires = [
    "torch==2.9.1",
    "torchaudio==2.9.1",
    "fairseq2==0.8.1",
    "transformers>=4.57,<4.58",
    "peft>=0.17,<0.19",
    "hydra-core==1.3.2",
    "omegaconf==2.3.0",
    "sentencepiece>=0.2",
    "webdataset==1.0.2",
    "wandb>=0.22,<0.23",
    "numpy>=2.2,<2.3",
    "scipy>=1.13",
    "soundfile>=0.12",
    "soxr>=0.3",
    "pypinyin>=0.51",
    "pyloudnorm>=0.1.1",
    "torchcrepe==0.0.24",
    "scikit-learn>=1.5",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "requests>=2.31",
    "silero-vad>=6.2,<7",              # emoreason-infer's voice activity detection; weights inside the wheel
    "jiwer>=4,<5",  # ASR word error rate (AudioLLM-Reasoning ASR task)
]

extras_require = {
    # Reference implementations that tests compare our code against.
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "trl>=0.26,<0.27",                 # GRPO / SAPO / DPO losses (SAPO arrived in 0.26)
        "funasr>=1.2",                     # the public emotion2vec implementation
        "pytorch-metric-learning>=2.5",    # SupConLoss
        "selenium>=4.51,<5",               # drives Debian's chromium in the web demo's browser test
    ],
    # The web demo (python -m local.bin.demo).  6.18+ needs huggingface_hub>=1, which transformers 4.57 refuses.
    "demo": [
        "gradio>=6.17.3,<6.18",
    ],
}

setup(
    name="emoreason",
    version="0.1.0",
    description="Recipes for speech-emotion reasoning with audio language models",
    python_requires=">=3.10",
    packages=find_packages(include=["local", "local.*"]),
    package_data={"local": ["reasoning/prompts/*.txt", "reasoning/prompts/*.json"]},
    install_requires=install_requires,
    extras_require=extras_require,
    entry_points={"console_scripts": ["emoreason-infer=local.bin.infer:console"]},
)
