-- Against the real `diffill lsp` with the counting model pytest builds. Needs DIFFILL_SERVER,
-- DIFFILL_TEST_MODEL and DIFFILL_SOCKET in the environment; skipped (passes trivially with a
-- message) without them.
local server, model, sock = os.getenv("DIFFILL_SERVER"), os.getenv("DIFFILL_TEST_MODEL"),
  os.getenv("DIFFILL_SOCKET")
if not (server and model and sock) then
  io.stdout:write("# e2e skipped: DIFFILL_SERVER, DIFFILL_TEST_MODEL, DIFFILL_SOCKET unset\n")
  return {}
end

local diffill = require("diffill")
local ns = vim.api.nvim_get_namespaces()["diffill"]

---`native`: a stand-in for Neovim 0.12's `vim.lsp.inline_completion` while the client
---attaches (these specs run on 0.11); `use_native` sets `ghost_text.native`.
local function open(text, settings, native, use_native)
  local real_native = vim.lsp.inline_completion
  if native then vim.lsp.inline_completion = native end
  diffill.setup({
    cmd = { server, "lsp" },
    filetypes = { "text" },
    init_options = vim.tbl_extend("force", { model = model, socket = sock, maxTokens = 8,
                                             ensemble = 1, debounceMs = 0 }, settings or {}),
    ghost_text = { debounce_ms = 10, native = use_native },
  })
  vim.cmd("enew")
  local buf = vim.api.nvim_get_current_buf()
  -- A named buffer: edits come back by URI, and unnamed buffers would all share one.
  vim.api.nvim_buf_set_name(buf, vim.fn.tempname() .. ".txt")
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, { text })
  vim.bo[buf].filetype = "text"  -- the FileType autocmd starts the client
  assert(vim.wait(120000, function() return diffill.client(buf) ~= nil end, 50),
         "the client attached")
  vim.lsp.inline_completion = real_native
  return buf
end

local function ghost(buf)
  local marks = vim.api.nvim_buf_get_extmarks(buf, ns, 0, -1, { details = true })
  if #marks == 0 then return nil end
  return marks[1][4].virt_text[1][1], marks[1]
end

---Ask for a suggestion at column `col` of line 1 and wait until the ghost text shows.
local function suggest_at(buf, col)
  vim.api.nvim_win_set_cursor(0, { 1, col })
  diffill.suggest(buf, 1)
  assert(vim.wait(120000, function() return ghost(buf) ~= nil end, 50), "ghost text shown")
end

---Type `text` at column `col` of line 1 as insert mode does: the text changes, the cursor
---moves behind it, and the autocommands' handlers run in Neovim's order (CursorMovedI first).
local function type_at(buf, col, text)
  vim.api.nvim_buf_set_text(buf, 0, col, 0, col, { text })
  vim.api.nvim_win_set_cursor(0, { 1, col + #text })
  diffill.on_cursor_moved(buf)
  diffill.on_text_changed(buf)
end

return {
  ["1 ghost text appears at the cursor and Tab-accept inserts it (on 0.12 too)"] = function()
    -- By default the plugin draws ghost text itself, even where the native API exists.
    local buf = open("c0 c1 c2 c3 c4  c8 c9 c10", nil,
                     { enable = function() error("the native path was taken") end })
    assert(vim.fn.maparg("<Tab>", "i", false, true).desc == "diffill: accept",
           "Tab is the plugin's accept key")
    suggest_at(buf, 15)
    local text, mark = ghost(buf)
    assert(text == "c5 c6 c7", "ghost text was: " .. tostring(text))
    assert(mark[2] == 0 and mark[3] == 15, "at the cursor")
    assert(diffill.accept("all"), "accepted")
    local line = vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    assert(line == "c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 c10", "buffer is: " .. line)
    assert(ghost(buf) == nil, "ghost text cleared")
    assert(vim.api.nvim_win_get_cursor(0)[2] == 23, "cursor after the insertion")
  end,
  ["1c with ghost_text.native, the keys call the native get and select"] = function()
    local calls = {}
    local native = {
      enable = function(on) table.insert(calls, "enable " .. tostring(on)) end,
      get = function() table.insert(calls, "get"); return true end,
      select = function(o) table.insert(calls, "select " .. o.count) end,
    }
    local buf = open("c0 c1 c2 c3 c4  c8 c9 c10", nil, native, true)
    vim.lsp.inline_completion = native
    vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("i<Tab><M-]><M-[><Esc>", true, false,
                                                         true), "xt", false)
    vim.lsp.inline_completion = nil
    assert(table.concat(calls, ", ") == "enable true, get, select 1, select -1",
           "calls: " .. table.concat(calls, ", "))
    local line = vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    assert(line == "c0 c1 c2 c3 c4  c8 c9 c10", "Tab inserted nothing itself: " .. line)
    assert(vim.fn.maparg("<M-l>", "i") == "", "no line accept on the native path")
  end,

  ["1b the statusline component names the model and the last latency"] = function()
    local buf = open("c0 c1 c2 c3 c4  c8 c9 c10")
    suggest_at(buf, 15)
    assert(vim.wait(30000, function() return diffill.statusline():find("ms$") ~= nil end, 50),
           "statusline was: " .. diffill.statusline())
    local line = diffill.statusline()
    assert(line:find("^diffill: " .. vim.fs.basename(model) .. " cpu %d+ms$"), line)
  end,
  ["2 a stale suggestion is not accepted after the buffer changed"] = function()
    local buf = open("c0 c1 c2 c3 c4  c8 c9 c10")
    suggest_at(buf, 15)
    vim.api.nvim_buf_set_text(buf, 0, 0, 0, 0, { "x" })
    assert(not diffill.accept("all"), "nothing inserted")
  end,
  ["3 refine is shown as a diff and applied over exactly the selection when accepted"] = function()
    local buf = open("c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10")
    local done = false
    diffill.rewrite("refine", { start = { 0, 15 }, ["end"] = { 0, 23 } }, buf,
                    function(err, res)
                      assert(not err, vim.inspect(err))
                      assert(res.reviewed and not res.applied and #res.remasked > 0,
                             vim.inspect(res))
                      done = true
                    end)
    assert(vim.wait(120000, function() return done and diffill.reviewing() ~= nil end, 50),
           "command answered and the diff shown")
    local r = diffill.reviewing()
    local shown = table.concat(vim.api.nvim_buf_get_lines(r.buf, 0, -1, false), "\n")
    assert(shown:find("-c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10", 1, true), shown)
    assert(shown:find("+c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 c10", 1, true), shown)
    local line = vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    assert(line == "c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10", "applied before review: " .. line)
    assert(diffill.review_accept(), "accepted")
    line = vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    assert(line == "c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 c10", "buffer is: " .. line)
    assert(diffill.reviewing() == nil, "the diff window closed")
  end,
  ["3d a rejected refine leaves the buffer as it was"] = function()
    local buf = open("c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10")
    diffill.rewrite("refine", { start = { 0, 15 }, ["end"] = { 0, 23 } }, buf)
    assert(vim.wait(120000, function() return diffill.reviewing() ~= nil end, 50), "diff shown")
    -- The reject key of the diff window, typed as a person would.
    vim.api.nvim_set_current_win(diffill.reviewing().win)
    vim.api.nvim_feedkeys("r", "x", false)
    assert(diffill.reviewing() == nil, "the diff window closed")
    local line = vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    assert(line == "c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10", "buffer is: " .. line)
  end,
  ["3b an instruction reaches the server, and a mask model says it cannot follow one"] = function()
    local buf = open("c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10")
    local answer
    diffill.rewrite("rewrite", { start = { 0, 15 }, ["end"] = { 0, 23 } }, buf,
                    function(err, res) answer = { err = err, res = res } end, "count up")
    assert(vim.wait(120000, function() return answer ~= nil end, 50), "command answered")
    assert(answer.err and answer.err.message:find("cannot follow an instruction"),
           vim.inspect(answer))
    local line = vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    assert(line == "c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10", "buffer untouched: " .. line)
  end,
  ["3c previews of the committed tokens are drawn, then the answer replaces them"] = function()
    diffill.stop()  -- a fresh client with the preview setting
    local before = diffill.stats.previews
    local buf = open("c0 c1 c2 c3 c4  c8 c9 c10",
                     { preview = true, schedule = "fixed", steps = 3, maxTokens = 3 })
    suggest_at(buf, 15)
    assert(vim.wait(120000, function() return diffill.current() ~= nil end, 50), "answered")
    assert(diffill.stats.previews > before, "no preview was drawn")
    assert(ghost(buf) == "c5 c6 c7", "ghost text was: " .. tostring(ghost(buf)))
    diffill.stop()
  end,
  ["4 typing what the ghost says keeps the rest shown, with no new request"] = function()
    local buf = open("c0 c1 c2 c3 c4  c8 c9 c10")
    suggest_at(buf, 15)
    type_at(buf, 15, "c5")
    local text, mark = ghost(buf)
    assert(text == " c6 c7", "ghost text was: " .. tostring(text))
    assert(mark[3] == 17, "at the new cursor")
    type_at(buf, 17, " ")  -- past its first word, every key typed along keeps it
    text, mark = ghost(buf)
    assert(text == "c6 c7" and mark[3] == 18, "ghost text was: " .. tostring(text))
    assert(diffill.accept("all"), "accepted")
    local line = vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    assert(line == "c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 c10", "buffer is: " .. line)
  end,
  ["6 accept-word inserts the next word and keeps the rest; cycling shows each candidate"] = function()
    local buf = open("c0 c1 c2 c3 c4  c8 c9 c10")
    suggest_at(buf, 15)
    local n = #diffill.current().items
    local i = diffill.cycle(1)
    assert(i == (n > 1 and 2 or 1) and ghost(buf) == diffill.current().items[i])
    assert(diffill.cycle(-1) == 1 and ghost(buf) == diffill.current().items[1])
    assert(diffill.accept("word"), "a word accepted")
    local line = vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    assert(line == "c0 c1 c2 c3 c4 c5 c8 c9 c10", "buffer is: " .. line)
    local text, mark = ghost(buf)
    assert(text == " c6 c7" and mark[3] == 17, "the rest shown: " .. tostring(text))
    assert(diffill.accept("word") and diffill.accept("all"))
    line = vim.api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    assert(line == "c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 c10", "buffer is: " .. line)
  end,
  ["5 moving the cursor away clears the ghost; typing something else does too"] = function()
    local buf = open("c0 c1 c2 c3 c4  c8 c9 c10")
    suggest_at(buf, 15)
    vim.api.nvim_win_set_cursor(0, { 1, 2 })
    diffill.on_cursor_moved(buf)
    assert(ghost(buf) == nil and diffill.current() == nil, "cleared on a plain move")
    suggest_at(buf, 15)
    type_at(buf, 15, "x")
    assert(ghost(buf) == nil, "cleared when the typed text differs from the ghost")
    vim.api.nvim_buf_set_text(buf, 0, 15, 0, 16, { "" })
    suggest_at(buf, 15)
    type_at(buf, 15, "c")
    assert(ghost(buf) == nil, "cleared when typed into instead of taken (the server is asked)")
  end,
}
