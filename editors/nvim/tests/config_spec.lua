local config = require("diffill.config")

return {
  ["defaults apply without setup()"] = function()
    assert(config.options.cmd[1] == "diffill")
    assert(config.options.keymaps.accept == "<Tab>")
  end,
  ["the statusline says when the last request held back everything it had"] = function()
    local diffill = require("diffill")
    local note = { state = "ready", model = "/m/diffill-small", device = "cpu", lastLatencyMs = 40,
                   withheld = 2 }
    diffill.on_status(note)
    assert(diffill.statusline() == "diffill: diffill-small cpu 40ms, unsure", diffill.statusline())
    note.withheld = 0
    diffill.on_status(note)
    assert(diffill.statusline() == "diffill: diffill-small cpu 40ms", diffill.statusline())
    note.withheld = vim.NIL  -- an older server sends none
    diffill.on_status(note)
    assert(diffill.statusline() == "diffill: diffill-small cpu 40ms", diffill.statusline())
  end,
  ["setup merges nested options over the defaults"] = function()
    require("diffill").setup({ ghost_text = { debounce_ms = 40 }, init_options = { maxTokens = 8 } })
    assert(config.options.ghost_text.debounce_ms == 40)
    assert(config.options.ghost_text.hl_group == "Comment", "siblings keep their defaults")
    assert(config.options.init_options.maxTokens == 8)
    require("diffill").setup({})
    assert(config.options.ghost_text.debounce_ms == 0, "a new setup starts from the defaults")
  end,
  ["on Neovim < 0.10 the plugin says so once and stays off"] = function()
    local has, echo, loaded = vim.fn.has, vim.api.nvim_echo, vim.g.loaded_diffill
    local said = {}
    vim.fn.has = function(f) if f == "nvim-0.10" then return 0 end return has(f) end
    vim.api.nvim_echo = function(chunks) table.insert(said, chunks[1][1]) end
    vim.api.nvim_del_augroup_by_name("diffill_autostart")
    vim.g.loaded_diffill = nil
    local file = vim.api.nvim_get_runtime_file("plugin/diffill.lua", false)[1]
    local ok, err = pcall(dofile, file)
    vim.fn.has, vim.api.nvim_echo = has, echo
    local autostart = pcall(vim.api.nvim_get_autocmds, { group = "diffill_autostart" })
    vim.g.loaded_diffill = nil
    dofile(file)  -- back to the real plugin for the other specs
    vim.g.loaded_diffill = loaded
    assert(ok, tostring(err))
    assert(#said == 1 and said[1]:find("needs Neovim >= 0.10", 1, true), vim.inspect(said))
    assert(not autostart, "no autostart on an old Neovim")
  end,
  ["a file opened without the server on PATH says so once, with no Lua error"] = function()
    -- Neovim's own vim.notify: at error level inside an autocommand it raises.
    require("diffill").setup({ cmd = { "diffill-not-installed-here" } })
    local path = vim.fn.tempname() .. ".py"
    vim.fn.writefile({ "x = 1" }, path)
    vim.cmd("filetype on")
    local function said()
      local _, n = vim.api.nvim_exec2("messages", { output = true }).output
        :gsub("diffill%-not%-installed%-here` is not executable", "")
      return n
    end
    -- Opening it runs filetype detection, whose FileType autocommand starts the client: an
    -- error raised in there came back out of :edit as a stack trace.
    local ok, err = pcall(vim.cmd.edit, path)
    vim.wait(5000, function() return said() > 0 end)
    require("diffill").setup({})
    vim.cmd("bwipeout! " .. vim.fn.fnameescape(path))
    vim.fn.delete(path)
    vim.cmd("filetype off")
    assert(ok, tostring(err))
    assert(said() == 1, vim.api.nvim_exec2("messages", { output = true }).output)
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
