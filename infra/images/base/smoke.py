import sys

print(f"hello from base: python {sys.version_info[0]}, {sum(range(1, 101))}")
