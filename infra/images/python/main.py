import json
import sqlite3
import sys
import venv  # noqa: F401 - the image's addition

total = sqlite3.connect(":memory:").execute("select sum(value) from json_each(?)", [json.dumps(list(range(1, 101)))])
print(f"hello from python {sys.version_info[0]}.{sys.version_info[1]}: {total.fetchone()[0]}")
