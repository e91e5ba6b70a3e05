---@mod diffill Ghost-text infilling and rewrite/refine from the diffill language server
local config = require("diffill.config")

local M = {}
local ns = vim.api.nvim_create_namespace("diffill")
local uv = vim.uv or vim.loop

---@class diffill.Suggestion
---@field bufnr integer
---@field row integer 0-based
---@field col integer 0-based byte column
---@field text string
---@field tick integer changedtick when it was asked for (or last typed through)
---@field after string the line's text after the cursor then
---@field items string[] every candidate the server sent (best first)
---@field index integer which of them is shown
---@field through boolean|nil set once the user typed through the first word of its text
local current = nil
local pending = {} ---@type table<integer, integer> bufnr -> request id
local asked = {} ---@type table<integer, {row: integer, col: integer, tick: integer}>
---Counts for :DiffillStatus and the specs.
M.stats = { previews = 0 }
local last_status = nil ---@type table|nil the server's latest $/diffill/status
local timer = nil
local reported = {} ---@type table<string, boolean>

local function notify_once(msg, level)
  if reported[msg] then return end
  reported[msg] = true
  -- Scheduled: an error-level notify inside an autocommand (the FileType one that starts the
  -- client) is raised as a Lua error, a stack trace and "Press ENTER" instead of a message.
  vim.schedule(function() vim.notify("diffill: " .. msg, level or vim.log.levels.WARN) end)
end

---The diffill client attached to `bufnr`, if any.
function M.client(bufnr)
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  return get({ name = "diffill", bufnr = bufnr or 0 })[1]
end

local function request(client, method, params, handler, bufnr)
  if vim.fn.has("nvim-0.11") == 1 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

local function cancel(client, id)
  if vim.fn.has("nvim-0.11") == 1 then client:cancel_request(id) else client.cancel_request(id) end
end

---Clear the ghost text.
function M.clear()
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_valid(buf) then vim.api.nvim_buf_clear_namespace(buf, ns, 0, -1) end
  end
  current = nil
end

---The suggestion shown now, if any.
function M.current() return current end

local function render(s)
  vim.api.nvim_buf_clear_namespace(s.bufnr, ns, 0, -1)
  local lines = vim.split(s.text, "\n", { plain = true })
  local hl = config.options.ghost_text.hl_group
  local virt_lines = {}
  for i = 2, #lines do virt_lines[#virt_lines + 1] = { { lines[i], hl } } end
  vim.api.nvim_buf_set_extmark(s.bufnr, ns, s.row, s.col, {
    virt_text = { { lines[1], hl } },
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
end

---Cancel the request in flight for `bufnr`, if any.
local function cancel_pending(bufnr)
  local client = M.client(bufnr)
  if pending[bufnr] and client then cancel(client, pending[bufnr]) end
  pending[bufnr] = nil
end

---A suggestion of `texts` (best first) shown at row/col of `bufnr`, whose line then ended
---with `after`.
local function suggestion(bufnr, row, col, texts, after)
  return { bufnr = bufnr, row = row, col = col, text = texts[1], items = texts, index = 1,
           after = after, tick = vim.api.nvim_buf_get_changedtick(bufnr) }
end

---Ask the server for a suggestion at the cursor of `bufnr` (0: current).
---@param bufnr integer|nil
---@param trigger integer|nil LSP InlineCompletionTriggerKind (1 invoked, 2 automatic)
function M.suggest(bufnr, trigger)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local client = M.client(bufnr)
  if not client then return end
  cancel_pending(bufnr)
  local win = vim.fn.bufwinid(bufnr)
  local cursor = vim.api.nvim_win_get_cursor(win ~= -1 and win or 0)
  local row, col = cursor[1] - 1, cursor[2]
  local params = vim.lsp.util.make_position_params(win ~= -1 and win or 0, client.offset_encoding)
  params.context = { triggerKind = trigger or 1 }
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  asked[bufnr] = { row = row, col = col, tick = tick }
  local ok, id = request(client, "textDocument/inlineCompletion", params, function(err, result)
    pending[bufnr] = nil
    asked[bufnr] = nil
    if err then
      if not current then vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1) end  -- a preview
      if err.code ~= -32800 then notify_once(err.message or tostring(err)) end
      return
    end
    -- Drop results for a buffer that changed meanwhile.
    if not vim.api.nvim_buf_is_valid(bufnr) or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return
    end
    local items = result and (result.items or result) or {}
    if #items == 0 or (items[1].insertText or "") == "" then
      M.clear()
      return
    end
    local texts = {}
    for _, item in ipairs(items) do
      local t = item.insertText
      if type(t) == "table" then t = t.value end
      if t and t ~= "" then texts[#texts + 1] = t end
    end
    local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
    current = suggestion(bufnr, row, col, texts, line:sub(col + 1))
    render(current)
  end, bufnr)
  if ok then pending[bufnr] = id end
end

---`$/diffill/preview` (server setting `preview`): draw what the model has committed so far
---while the request for that place is still pending and the buffer unchanged. It is not a
---suggestion: nothing can be accepted until the answer replaces it.
function M.on_preview(params)
  local bufnr = vim.uri_to_bufnr(params.textDocument.uri)
  local at = asked[bufnr]
  if not at or not pending[bufnr] or params.position.line ~= at.row
      or vim.api.nvim_buf_get_changedtick(bufnr) ~= at.tick or (params.text or "") == "" then
    return
  end
  M.stats.previews = M.stats.previews + 1
  current = nil
  render({ bufnr = bufnr, row = at.row, col = at.col, text = params.text })
end

---A statusline component from the server's `$/diffill/status` notes, e.g.
---`diffill: diffill-small cpu 138ms`, `diffill: loading`, `diffill: error`; "" before the
---server has said anything. Use it as `%{v:lua.require'diffill'.statusline()}`.
function M.statusline()
  local note = last_status
  if not note then return "" end
  if note.state == "error" then return "diffill: error" end
  if note.state == "loading" then return "diffill: loading" end
  local model = note.model and vim.fs.basename(note.model) or "model"
  local latency = note.lastLatencyMs ~= nil and note.lastLatencyMs ~= vim.NIL
    and (" %dms"):format(math.floor(note.lastLatencyMs + 0.5)) or ""
  local device = (note.device and note.device ~= vim.NIL) and (" " .. note.device) or ""
  -- The last request held back every completion it had (scored under minConfidence).
  local unsure = (type(note.withheld) == "number" and note.withheld > 0) and ", unsure" or ""
  return ("diffill: %s%s%s%s"):format(model, device, latency, unsure)
end

---`$/diffill/status`: keep it for |diffill.statusline()| and redraw the statuslines.
function M.on_status(params)
  last_status = params
  vim.cmd("redrawstatus!")
end

---Show the next (`step` 1) or previous (-1) candidate the server sent, wrapping around.
---Returns the index shown, or nil when there is no suggestion.
function M.cycle(step)
  local s = current
  if not s or not vim.api.nvim_buf_is_valid(s.bufnr) then return nil end
  s.index = (s.index - 1 + (step or 1)) % #s.items + 1
  s.text = s.items[s.index]
  render(s)
  return s.index
end

---Accept the suggestion, its first line, or its next word. Returns true when something
---was inserted. After a word the rest stays shown (type-through).
---@param what "all"|"line"|"word"|nil
function M.accept(what)
  local s = current
  if not s or not vim.api.nvim_buf_is_valid(s.bufnr) then return false end
  if vim.api.nvim_buf_get_changedtick(s.bufnr) ~= s.tick then
    M.clear()
    return false
  end
  local text = s.text
  if what == "line" then text = vim.split(text, "\n", { plain = true })[1] end
  if what == "word" then
    -- Leading blanks, then a word or a run of one other character (as VS Code's next word).
    text = text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text:match("^%s+") or text
  end
  local lines = vim.split(text, "\n", { plain = true })
  local rest = what == "word" and #text < #s.text and s.text:sub(#text + 1) or nil
  M.clear()
  vim.api.nvim_buf_set_text(s.bufnr, s.row, s.col, s.row, s.col, lines)
  local win = vim.fn.bufwinid(s.bufnr)
  if win ~= -1 then
    local end_row = s.row + #lines - 1
    local end_col = (#lines == 1 and s.col or 0) + #lines[#lines]
    vim.api.nvim_win_set_cursor(win, { end_row + 1, end_col })
    if rest and #lines == 1 then
      current = suggestion(s.bufnr, s.row, end_col, { rest }, s.after)
      render(current)
    end
  end
  return true
end

---The ghost's first word, as accept-word takes it: leading non-word characters and the word
---after them, else the leading punctuation (the server's `infill.text.first_word`).
local function first_word(text)
  return text:match("^[^%w_\n]*[%w_]+") or text:match("^%s*[^%w_%s]+") or ""
end

---Type-through: the user typed the beginning of the ghost text (and changed nothing else), so
---the rest stays shown at the new cursor, with no new request and no flicker; but only once
---they have typed through its first word. Typing inside it instead of taking it in one key
---mostly means it was wrong: the ghost goes and the server is asked again (and leaves the
---rest passed over out of its answer). Returns true when it kept the ghost.
local function type_through(bufnr)
  local s = current
  if not s or s.bufnr ~= bufnr or not vim.api.nvim_buf_is_valid(bufnr) then return false end
  local win = vim.fn.bufwinid(bufnr)
  if win == -1 then return false end
  local cur = vim.api.nvim_win_get_cursor(win)
  local row, col = cur[1] - 1, cur[2]
  if row ~= s.row or col <= s.col then return false end
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  local typed = line:sub(s.col + 1, col)
  if #typed >= #s.text or s.text:sub(1, #typed) ~= typed or line:sub(col + 1) ~= s.after then
    return false
  end
  if not s.through and #typed < #first_word(s.text) then return false end
  s.through = true
  s.text, s.col, s.tick = s.text:sub(#typed + 1), col, vim.api.nvim_buf_get_changedtick(bufnr)
  render(s)
  return true
end

---TextChangedI: keep the ghost when typed through, else clear it and ask again (debounced).
function M.on_text_changed(bufnr)
  if type_through(bufnr) then return end
  M.clear()
  M.schedule_suggest(bufnr)
end

---CursorMovedI: a ghost is only true where it was asked for. A move that came with a text
---change is left to TextChangedI (which fires after this event); a plain move clears the
---ghost, cancels the request in flight and asks again at the new place.
function M.on_cursor_moved(bufnr)
  if current and vim.api.nvim_buf_get_changedtick(bufnr) ~= current.tick then return end
  local win = vim.fn.bufwinid(bufnr)
  local cur = win ~= -1 and vim.api.nvim_win_get_cursor(win) or nil
  if current and cur and current.bufnr == bufnr and cur[1] - 1 == current.row
      and cur[2] == current.col then
    return
  end
  if current or pending[bufnr] then
    M.clear()
    cancel_pending(bufnr)
    M.schedule_suggest(bufnr)
  end
end

function M.schedule_suggest(bufnr)
  if timer then timer:stop() end
  timer = timer or uv.new_timer()
  timer:start(config.options.ghost_text.debounce_ms, 0, vim.schedule_wrap(function()
    if vim.api.nvim_get_current_buf() == bufnr and vim.fn.mode():sub(1, 1) == "i" then
      M.suggest(bufnr, 2)
    end
  end))
end

local function on_attach(client, bufnr)
  local gt = config.options.ghost_text
  local native = vim.lsp.inline_completion
  if gt.native and native and native.enable then
    -- Neovim 0.12 draws and accepts the ghost itself: accept is `get` (true when something
    -- was accepted; otherwise the key keeps its meaning), cycling is `select`. It has no
    -- partial accept, so accept_line and accept_word stay unmapped on this path.
    native.enable(true, { bufnr = bufnr })
    local keys = config.options.keymaps
    if keys.accept and keys.accept ~= "" then
      vim.keymap.set("i", keys.accept, function()
        if native.get() then return "" end
        return vim.api.nvim_replace_termcodes(keys.accept, true, false, true)
      end, { buffer = bufnr, expr = true, replace_keycodes = false, desc = "diffill: accept" })
    end
    for lhs, step in pairs({ [keys.next or ""] = 1, [keys.prev or ""] = -1 }) do
      if lhs ~= "" and native.select then
        vim.keymap.set("i", lhs, function() native.select({ count = step }) end,
                       { buffer = bufnr, desc = "diffill: next/previous candidate" })
      end
    end
    return
  end
  if not gt.enabled then return end
  local group = vim.api.nvim_create_augroup("diffill_" .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "TextChangedP" }, {
    group = group, buffer = bufnr, callback = function() M.on_text_changed(bufnr) end,
  })
  vim.api.nvim_create_autocmd("CursorMovedI", {
    group = group, buffer = bufnr, callback = function() M.on_cursor_moved(bufnr) end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group, buffer = bufnr,
    callback = function()
      M.clear()
      cancel_pending(bufnr)
    end,
  })
  local keys = config.options.keymaps
  local function map(lhs, what)
    if not lhs or lhs == "" then return end
    vim.keymap.set("i", lhs, function()
      if current and current.bufnr == bufnr then
        vim.schedule(function() M.accept(what) end)
        return ""
      end
      return vim.api.nvim_replace_termcodes(lhs, true, false, true)
    end, { buffer = bufnr, expr = true, replace_keycodes = false, desc = "diffill: accept" })
  end
  map(keys.accept, "all")
  map(keys.accept_line, "line")
  map(keys.accept_word, "word")
  for lhs, step in pairs({ [keys.next or ""] = 1, [keys.prev or ""] = -1 }) do
    if lhs ~= "" then
      vim.keymap.set("i", lhs, function() M.cycle(step) end,
                     { buffer = bufnr, desc = "diffill: next/previous candidate" })
    end
  end
  if keys.dismiss and keys.dismiss ~= "" then
    vim.keymap.set("i", keys.dismiss, M.clear, { buffer = bufnr, desc = "diffill: dismiss" })
  end
end

-- ------------------------------------------------------------------ reviewing rewrites

local review = nil ---@type {bufnr: integer, tick: integer, edit: table, encoding: string, win: integer, buf: integer}|nil

---The rewrite shown for review, if any.
function M.reviewing() return review end

local function close_review()
  local r = review
  review = nil
  if r and vim.api.nvim_win_is_valid(r.win) then vim.api.nvim_win_close(r.win, true) end
  return r
end

---Apply the rewrite under review. Returns true when it was applied; false when none is shown
---or its buffer changed since (nothing is applied then).
function M.review_accept()
  local r = close_review()
  if not r then return false end
  if not vim.api.nvim_buf_is_valid(r.bufnr) or vim.api.nvim_buf_get_changedtick(r.bufnr) ~= r.tick then
    notify_once("the buffer changed since the rewrite was shown; nothing applied",
                vim.log.levels.WARN)
    return false
  end
  vim.lsp.util.apply_workspace_edit(r.edit, r.encoding)
  return true
end

---Discard the rewrite under review.
function M.review_reject()
  return close_review() ~= nil
end

---The lines an edit of one document changes: (bufnr, first row, old lines, new lines).
local function edited_lines(change, encoding)
  local bufnr = vim.uri_to_bufnr(change.textDocument.uri)
  vim.fn.bufload(bufnr)
  local first, last = math.huge, -1
  for _, e in ipairs(change.edits) do
    first = math.min(first, e.range.start.line)
    last = math.max(last, e.range["end"].line)
  end
  local old = vim.api.nvim_buf_get_lines(bufnr, first, last + 1, false)
  -- Apply the edits to a scratch copy of those lines: Neovim converts the positions.
  local scratch = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(scratch, 0, -1, false, old)
  local moved = {}
  for _, e in ipairs(change.edits) do
    moved[#moved + 1] = { newText = e.newText, range = {
      start = { line = e.range.start.line - first, character = e.range.start.character },
      ["end"] = { line = e.range["end"].line - first, character = e.range["end"].character } } }
  end
  vim.lsp.util.apply_text_edits(moved, scratch, encoding)
  local new = vim.api.nvim_buf_get_lines(scratch, 0, -1, false)
  vim.api.nvim_buf_delete(scratch, { force = true })
  return bufnr, first, old, new
end

---Show an edit that asks for confirmation as a unified diff in a floating window.
local function show_review(edit, encoding, label)
  local change = (edit.documentChanges or {})[1]
  if not change or not change.edits then return end
  close_review()
  local bufnr, first, old, new = edited_lines(change, encoding)
  local diff = (vim.text and vim.text.diff or vim.diff)(table.concat(old, "\n") .. "\n",
    table.concat(new, "\n") .. "\n", { result_type = "unified", ctxlen = 2 })
  local lines = { ("%s (line %d): a/<CR> accept, r/q/<Esc> reject"):format(
    label or "diffill", first + 1) }
  vim.list_extend(lines, vim.split(diff, "\n", { trimempty = true }))
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].filetype = "diff"
  vim.bo[buf].modifiable = false
  local width = 20
  for _, l in ipairs(lines) do width = math.max(width, vim.fn.strdisplaywidth(l)) end
  local win = vim.api.nvim_open_win(buf, true, {
    relative = "editor", style = "minimal", border = "rounded",
    width = math.min(width + 1, vim.o.columns - 4), height = math.min(#lines, vim.o.lines - 4),
    row = 1, col = math.max(0, math.floor((vim.o.columns - width) / 2)),
  })
  review = { bufnr = bufnr, tick = vim.api.nvim_buf_get_changedtick(bufnr), edit = edit,
             encoding = encoding, win = win, buf = buf }
  for _, key in ipairs({ "a", "<CR>" }) do
    vim.keymap.set("n", key, M.review_accept, { buffer = buf, nowait = true })
  end
  for _, key in ipairs({ "r", "q", "<Esc>" }) do
    vim.keymap.set("n", key, M.review_reject, { buffer = buf, nowait = true })
  end
end

---workspace/applyEdit from the server: an edit that needs confirmation is shown for review
---and answered "not applied (yet)"; it is applied by the plugin if you accept it. Anything
---else takes Neovim's default path.
local function apply_edit_handler(err, params, ctx, cfg)
  local needs = false
  for _, note in pairs(params.edit.changeAnnotations or {}) do
    if note.needsConfirmation then needs = true end
  end
  if not needs then return vim.lsp.handlers["workspace/applyEdit"](err, params, ctx, cfg) end
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  local encoding = client and client.offset_encoding or "utf-16"
  vim.schedule(function() show_review(params.edit, encoding, params.label) end)
  return { applied = false, failureReason = "shown for review in Neovim" }
end

---Start (or reuse) the diffill client for `bufnr`.
function M.start(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local opts = config.options
  if vim.fn.executable(opts.cmd[1]) ~= 1 then
    notify_once(("`%s` is not executable; see :checkhealth diffill"):format(opts.cmd[1]),
                vim.log.levels.ERROR)
    return nil
  end
  local root = (vim.fs.root and vim.fs.root(bufnr, { ".git", "pyproject.toml", "package.json" }))
    or vim.fn.getcwd()
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  local handlers = { ["$/diffill/preview"] = function(_, params) M.on_preview(params) end,
                     ["$/diffill/status"] = function(_, params) M.on_status(params) end }
  if opts.review then
    -- Versioned edits with change annotations: the server marks a rewrite as needing
    -- confirmation, and the handler shows it for review instead of applying it.
    capabilities = vim.tbl_deep_extend("force", capabilities, { workspace = { workspaceEdit = {
      documentChanges = true, changeAnnotationSupport = { groupsOnLabel = false } } } })
    handlers["workspace/applyEdit"] = apply_edit_handler
  end
  return vim.lsp.start({
    name = "diffill",
    cmd = opts.cmd,
    root_dir = root,
    init_options = opts.init_options,
    capabilities = capabilities,
    on_attach = on_attach,
    handlers = handlers,
  }, { bufnr = bufnr })
end

---Stop the diffill clients.
function M.stop()
  M.clear()
  for bufnr in pairs(pending) do cancel_pending(bufnr) end
  if timer then timer:stop() end
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  for _, c in ipairs(get({ name = "diffill" })) do
    if vim.fn.has("nvim-0.11") == 1 then c:stop() else c.stop() end
  end
end

---Rewrite or refine a range through the server; the edit comes back as workspace/applyEdit.
---@param kind "rewrite"|"refine"
---@param range {start: integer[], ["end"]: integer[]} 0-based {row, byte col}, end exclusive
---@param bufnr integer|nil
---@param on_done fun(err: any, result: any)|nil
---@param instruction string|nil what a rewrite should do (chat models such as DiffusionGemma)
function M.rewrite(kind, range, bufnr, on_done, instruction)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local client = M.client(bufnr)
  if not client then
    notify_once("no diffill server for this buffer", vim.log.levels.ERROR)
    return
  end
  local p = vim.lsp.util.make_given_range_params(
    { range.start[1] + 1, range.start[2] }, { range["end"][1] + 1, range["end"][2] },
    bufnr, client.offset_encoding)
  -- make_given_range_params treats the end as inclusive: move it back to exclusive.
  p.range["end"] = vim.lsp.util.make_given_range_params(
    { range["end"][1] + 1, range["end"][2] }, { range["end"][1] + 1, range["end"][2] },
    bufnr, client.offset_encoding).range.start
  local version = vim.lsp.util.buf_versions and vim.lsp.util.buf_versions[bufnr] or nil
  local command = kind == "refine" and "diffill.refineSelection" or "diffill.rewriteSelection"
  -- vim.NIL keeps the array whole when there is an instruction but no known version.
  local args = { p.textDocument.uri, p.range, version == nil and vim.NIL or version }
  if instruction and vim.trim(instruction) ~= "" then
    args[4] = vim.trim(instruction)
  end
  request(client, "workspace/executeCommand", { command = command, arguments = args },
          function(err, result)
            if err then notify_once(err.message or tostring(err), vim.log.levels.ERROR) end
            if on_done then on_done(err, result) end
          end, bufnr)
end

---Rewrite/refine lines `line1`..`line2` (1-based, inclusive), as the :Diffill commands do.
---@param instruction string|nil
function M.rewrite_lines(kind, line1, line2, bufnr, instruction)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local last = vim.api.nvim_buf_get_lines(bufnr, line2 - 1, line2, false)[1] or ""
  M.rewrite(kind, { start = { line1 - 1, 0 }, ["end"] = { line2 - 1, #last } }, bufnr, nil,
            instruction)
end

---Show the daemon status.
function M.status()
  local client = M.client(0)
  if not client then
    return vim.notify("diffill: no server attached to this buffer", vim.log.levels.WARN)
  end
  request(client, "workspace/executeCommand", { command = "diffill.status", arguments = {} },
          function(err, st)
            if err then return vim.notify("diffill: " .. err.message, vim.log.levels.ERROR) end
            local m = (st.models or {})[1] or {}
            vim.notify(("diffill: %s on %s (%s); %d requests, %d loads, last %s ms"):format(
              m.checkpoint or "no model", m.device or "?", m.dtype or "?",
              (st.counters or {}).requests or 0, st.loads or 0,
              tostring(st.lastLatencyMs or "-")))
          end, 0)
end

---Configure diffill (optional: defaults apply without it).
---@param opts diffill.Config|nil
function M.setup(opts)
  config.set(opts)
end

return M
