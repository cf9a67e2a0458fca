"""instruct-museformer: score -> expressive piano performance with a Museformer in fairseq 0.10.2."""
from setuptools import find_packages, setup

setup(
    name="instruct-museformer",
    version="0.1.0",
    description="Render piano scores into expressive performances with a fairseq Museformer",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["museformer", "museformer.*", "instruct_tokenizer", "instruct_tokenizer.*"]),
    package_data={"instruct_tokenizer": ["data/*.json"], "museformer": ["csrc/*.cpp"],
                  "museformer.serve": ["static/*.html", "static/*.js", "static/*.css"]},
    # fairseq==0.10.2 is built and patched by scripts/install_fairseq.sh (no wheel exists for py>3.8).
    install_requires=["torch", "numpy", "miditoolkit", "symusic", "tensorboard", "partitura", "tqdm", "matplotlib",
                      "scipy", "starlette", "uvicorn", "ninja"],
    entry_points={
        "console_scripts": [
            "instruct-tokenize=instruct_tokenizer.cli:main",
            "instruct-render=museformer.render:main",
            "instruct-eval=museformer.evaluate:main",
        ],
    },
)
