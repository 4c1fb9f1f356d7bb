"""Markdown table from saved benchmark results: python benchmarks/table.py results/*.json"""
import json
import sys

from glmcpu.bench import markdown

if __name__ == "__main__":
    print(markdown([json.load(open(p)) for p in sys.argv[1:]]))
