"""A stdio MCP server with the standard library alone, whose start is waiting (a database, a login), not
computing: `--start-delay S` seconds before it reads its first line. One tool, `echo`. bench/mcp.py starts three
of these to measure how gemma starts servers (together, while the model loads) apart from the CPU that
servers written with the SDK spend on their own start, which a 2-core machine cannot run side by side.

    python bench/mcp_waiting_server.py --start-delay 1.0
"""

import json
import sys
import time


def main():
    delay = float(sys.argv[sys.argv.index("--start-delay") + 1]) if "--start-delay" in sys.argv else 0.0
    time.sleep(delay)
    for line in sys.stdin:
        msg = json.loads(line)
        method, mid = msg.get("method"), msg.get("id")
        if mid is None:
            continue
        if method == "initialize":
            result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                      "serverInfo": {"name": "sleepy", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": [{"name": "echo", "description": "Say the text back.",
                                 "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                                                 "required": ["text"]}}]}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": "echo: " + msg["params"]["arguments"].get("text", "")}],
                      "isError": False}
        elif method == "ping":
            result = {}
        else:
            reply = {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": f"no method {method}"}}
            print(json.dumps(reply), flush=True)
            continue
        print(json.dumps({"jsonrpc": "2.0", "id": mid, "result": result}), flush=True)

main()
