#!/bin/sh
# A screenshot of the plugin at work in a real, interactive Neovim: nvim runs in a tmux pane,
# tmux types into it, the pane (with its colours) becomes HTML (aha) and then a PNG (headless
# Chromium). Used for the README.
#
#   editors/nvim/tests/screenshot.sh FILE LINE COL TEXT OUT.png [MODEL]
#
# Opens FILE, puts the cursor at LINE:COL (1-based), types TEXT in insert mode, waits for the
# ghost text and saves the pane as OUT.png. Needs nvim (>= 0.10), tmux, aha, chromium and the
# repository's .venv (make install); MODEL defaults to the bundled model.
set -eu
[ $# -ge 5 ] || { sed -n '2,10p' "$0" >&2; exit 2; }
file=$1 line=$2 col=$3 text=$4 out=$5 model=${6:-}
root=$(cd "$(dirname "$0")/../../.." && pwd)
nvim=$(command -v nvim || echo "$root/.venv/bin/nvim")
server="$root/.venv/bin/diffill"
for tool in tmux aha chromium "$nvim" "$server"; do
  command -v "$tool" >/dev/null || { echo "screenshot.sh: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d)
session="diffill-shot-$$"
# Stop the daemon the editor started: its socket lives in $work, which goes away.
trap 'tmux kill-session -t "$session" 2>/dev/null || true
      "$server" serve --stop --socket "$work/d.sock" >/dev/null 2>&1 || true
      rm -rf "$work"' EXIT
cp "$file" "$work/"
name=$(basename "$file")
if [ -n "$model" ]; then model_lua="\"$model\""; else model_lua=nil; fi
cat > "$work/init.lua" <<EOF
vim.opt.runtimepath:prepend("$root/editors/nvim")
vim.o.number = true
vim.o.termguicolors = true
vim.o.laststatus = 2
vim.o.swapfile = false
require("diffill").setup({
  cmd = { "$server", "lsp" },
  init_options = { model = $model_lua, socket = "$work/d.sock", debounceMs = 0 },
  ghost_text = { debounce_ms = 50, native = false },
})
EOF

tmux new-session -d -s "$session" -x 92 -y 24 \
  "cd '$work' && HF_HUB_OFFLINE=1 '$nvim' -u init.lua --listen '$work/nvim.sock' '$name'"
tmux set-option -t "$session" status off
# wait_for LUA TENTHS WHAT: poll the running nvim every 0.1 s until the Lua expression is
# nonzero (0 while nvim cannot answer yet); give up after TENTHS polls.
wait_for() {
  i=0
  until [ "$("$nvim" --server "$work/nvim.sock" --remote-expr "luaeval('$1')" 2>/dev/null \
           || echo 0)" != 0 ]; do
    i=$((i + 1)); [ $i -lt "$2" ] || { echo "screenshot.sh: $3" >&2; exit 1; }
    sleep 0.1
  done
}
wait_for '#vim.lsp.get_clients({bufnr = 0, name = "diffill"})' 600 "the client never attached"
# virtualedit=onemore: COL may be one past the line's end (typing after its last character);
# without it, normal mode clamps the cursor onto the last character and `i` types before it.
tmux send-keys -t "$session" ":set virtualedit=onemore | call cursor($line, $col)" Enter
tmux send-keys -t "$session" i
sleep 0.3
tmux send-keys -t "$session" -l "$text"
wait_for '#vim.api.nvim_buf_get_extmarks(0, vim.api.nvim_get_namespaces()["diffill"] or -1, 0, -1, {})' \
  1800 "no ghost text within 180s"
sleep 0.5
tmux capture-pane -t "$session" -e -p > "$work/pane.ansi"
aha --black --title "diffill in Neovim" < "$work/pane.ansi" > "$work/pane.html"
sed -i 's#<pre>#<pre style="font: 15px/1.25 DejaVu Sans Mono, monospace; margin: 8px">#' "$work/pane.html"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=900,500 \
  --screenshot="$work/shot.png" "file://$work/pane.html" >/dev/null 2>&1
cp "$work/shot.png" "$out"
echo "screenshot.sh: wrote $out"
