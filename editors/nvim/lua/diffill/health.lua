local M = {}

function M.check()
  local health = vim.health
  local opts = require("diffill.config").options
  health.start("diffill")
  if vim.fn.has("nvim-0.10") == 1 then
    health.ok("Neovim " .. tostring(vim.version()))
  else
    health.error("Neovim >= 0.10 is needed")
  end
  if vim.lsp.inline_completion and opts.ghost_text.native then
    health.ok("native inline completion (vim.lsp.inline_completion): accept and cycle keys "
              .. "call its get/select; no word or line accept")
  else
    health.ok("ghost text drawn by the plugin, with its keys (accept, line, word, cycle)")
  end
  local exe = opts.cmd[1]
  if vim.fn.executable(exe) ~= 1 then
    health.error(("`%s` not found"):format(exe),
                 { "pip install -e . in the diffill repository, or set cmd in setup()" })
    return
  end
  health.ok("server: " .. vim.fn.exepath(exe))
  local ok, res = pcall(function() return vim.system({ exe, "status" }, { text = true }):wait(10000) end)
  if ok and res.code == 0 then
    health.ok("daemon running:\n" .. res.stdout)
  else
    health.info("no daemon running yet (the first buffer starts one)")
  end
  if #vim.lsp.get_clients({ name = "diffill" }) > 0 then
    health.ok("client attached")
  else
    health.info("no diffill client attached")
  end
end

return M
