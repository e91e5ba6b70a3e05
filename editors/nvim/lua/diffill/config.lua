---@mod diffill.config Options with their defaults
local M = {}

---@class diffill.Config
M.defaults = {
  ---Command that starts the language server.
  cmd = { "diffill", "lsp" },
  ---Filetypes the server is started for.
  filetypes = { "python", "lua", "javascript", "typescript", "javascriptreact",
                "typescriptreact", "go", "rust", "c", "cpp", "java", "sh" },
  ---Start the server when a buffer of one of `filetypes` opens.
  autostart = true,
  ---Server settings (see the README's table), sent as `init_options`.
  init_options = {},
  ---Show a rewrite or refine as a diff in a floating window, applied only when you accept it
  ---(`a` or <CR>; `r`, `q` or <Esc> rejects). false: applied at once.
  review = true,
  ghost_text = {
    ---Show suggestions as you type in insert mode.
    enabled = true,
    ---Wait this long after the last keystroke before asking (ms). 0: ask at once and let the
    ---server's debounce decide (it adapts to your typing, 100-400 ms), so there is one wait.
    debounce_ms = 0,
    ---Highlight group of the ghost text.
    hl_group = "Comment",
    ---Use Neovim's own `vim.lsp.inline_completion` (>= 0.12) instead of the plugin's ghost
    ---text. Off by default: on the native path `accept`, `next` and `prev` are mapped to
    ---Neovim's own functions, and there is no partial accept, type-through or preview.
    native = false,
  },
  keymaps = {
    ---Accept the whole suggestion (insert mode); the key keeps its meaning otherwise.
    accept = "<Tab>",
    ---Accept the suggestion's first line only.
    accept_line = "<M-l>",
    ---Accept its next word (the rest stays shown).
    accept_word = "<M-Right>",
    ---Show the next / previous candidate.
    next = "<M-]>",
    prev = "<M-[>",
    ---Hide the suggestion.
    dismiss = "<C-]>",
  },
}

---@type diffill.Config
M.options = vim.deepcopy(M.defaults)

---Merge user options over the defaults.
---@param opts table|nil
function M.set(opts)
  M.options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  return M.options
end

return M
