local config = require("diffill.config")

return {
  ["defaults apply without setup()"] = function()
    assert(config.options.cmd[1] == "diffill")
    assert(config.options.keymaps.accept == "<Tab>")
  end,
  ["setup merges nested options over the defaults"] = function()
    require("diffill").setup({ ghost_text = { debounce_ms = 40 }, init_options = { maxTokens = 8 } })
    assert(config.options.ghost_text.debounce_ms == 40)
    assert(config.options.ghost_text.hl_group == "Comment", "siblings keep their defaults")
    assert(config.options.init_options.maxTokens == 8)
    require("diffill").setup({})
    assert(config.options.ghost_text.debounce_ms == 0, "a new setup starts from the defaults")
  end,
  ["plugin/ defines the commands"] = function()
    for _, name in ipairs({ "DiffillStart", "DiffillStop", "DiffillStatus", "DiffillSuggest",
                            "DiffillRewrite", "DiffillRefine" }) do
      assert(vim.fn.exists(":" .. name) == 2, name .. " is missing")
    end
  end,
  ["health check reports the version and a missing server"] = function()
    local seen = {}
    local real = vim.health
    local function record(kind) return function(msg) table.insert(seen, kind .. ": " .. msg) end end
    vim.health = { start = record("start"), ok = record("ok"), info = record("info"),
                   warn = record("warn"), error = record("error") }
    require("diffill").setup({ cmd = { "diffill-no-such-binary", "lsp" } })
    local ok, err = pcall(require("diffill.health").check)
    vim.health = real
    require("diffill").setup({})
    assert(ok, err)
    local text = table.concat(seen, "\n")
    assert(text:find("ok: Neovim ", 1, true), text)
    assert(text:find("error: `diffill-no-such-binary` not found", 1, true), text)
  end,
}
