-- Commands and the autostart autocmd only; everything else lives in lua/diffill.
if vim.g.loaded_diffill then return end
vim.g.loaded_diffill = true

if vim.fn.has("nvim-0.10") == 0 then
  -- One clear message instead of errors on every buffer; :checkhealth diffill says it too.
  local version = (vim.fn.execute("version"):match("NVIM v[%d%.]+") or "this Neovim")
  vim.api.nvim_echo({ { ("diffill needs Neovim >= 0.10 (%s): the plugin is off"):format(version),
                        "WarningMsg" } }, true, {})
  return
end

local function diffill() return require("diffill") end

vim.api.nvim_create_user_command("DiffillStart", function() diffill().start(0) end,
  { desc = "Start the diffill language server for this buffer" })
vim.api.nvim_create_user_command("DiffillStop", function() diffill().stop() end,
  { desc = "Stop the diffill language server" })
vim.api.nvim_create_user_command("DiffillStatus", function() diffill().status() end,
  { desc = "Show the diffill daemon status" })
vim.api.nvim_create_user_command("DiffillSuggest", function() diffill().suggest(0, 1) end,
  { desc = "Ask for a suggestion at the cursor" })
vim.api.nvim_create_user_command("DiffillRewrite", function(o)
  diffill().rewrite_lines("rewrite", o.line1, o.line2, 0, o.args)
end, { range = true, nargs = "*",
       desc = "Regenerate the selected lines [as the instruction says, chat models]" })
vim.api.nvim_create_user_command("DiffillRefine", function(o)
  diffill().rewrite_lines("refine", o.line1, o.line2, 0)
end, { range = true, desc = "Re-do only the doubtful tokens of the selected lines" })

vim.api.nvim_create_autocmd("FileType", {
  group = vim.api.nvim_create_augroup("diffill_autostart", { clear = true }),
  callback = function(args)
    local opts = require("diffill.config").options
    if opts.autostart and vim.tbl_contains(opts.filetypes, vim.bo[args.buf].filetype) then
      diffill().start(args.buf)
    end
  end,
})
